"""Fixtures of the runtime tests: the built-in tiny model (built once per session in
a directory of its own) and a fresh artifact store per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.storage import LocalStorage

SAMPLES = Path(__file__).resolve().parents[2] / "runtime" / "samples"


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(autouse=True)
def _runtime_dirs(settings, model_root: Path, tmp_path: Path) -> None:
    settings.RUNTIME_MODEL_DIR = model_root
    settings.RUNTIME_ARTIFACT_DIR = tmp_path / "artifacts"


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "artifacts")


def spec_dict(job_id: str = "ft-test", organization_id: int = 1, **hyper) -> dict:
    """A small, fast job on the sample dataset: 128-token rows, 4 per step."""
    return {
        "job_id": job_id,
        "organization_id": organization_id,
        "base_model": "tandem/tiny-llama",
        "training_file": str(SAMPLES / "chat.jsonl"),
        "output_dir": f"jobs/{job_id}",
        "hyperparameters": {
            "epochs": 1,
            "batch_size": 4,
            "learning_rate": 1e-2,
            "max_seq_length": 128,
            "n_checkpoints": 1,
            "seed": 7,
            **hyper,
        },
    }
