"""DDP through torchrun with the same entry point: two CPU processes on gloo compute
the same update as one process (one global batch, split between the ranks)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from runtime.spec import WorkSpec
from runtime.storage import LocalStorage
from runtime.trainer import train

from .conftest import spec_dict


@pytest.mark.skipif(
    shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
    reason="torchrun is installed with torch",
)
def test_two_processes_on_gloo_train_like_one(tmp_path, settings):
    spec = spec_dict("ft-ddp", n_checkpoints=1, lora_dropout=0.0)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    env = {
        **os.environ,
        "TANDEM_MODEL_DIR": str(settings.RUNTIME_MODEL_DIR),
        "OMP_NUM_THREADS": "1",
    }
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    result = tmp_path / "ddp.json"
    done = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "runtime.launch",
            "--spec",
            str(path),
            "--artifacts",
            str(tmp_path / "ddp"),
            "--result",
            str(result),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = {"ddp": json.loads(result.read_text())}
    single_run = train(
        WorkSpec.from_dict(spec), storage=LocalStorage(tmp_path / "single"), progress_bar=False
    )
    outputs["single"] = {"losses": single_run.losses}

    assert outputs["ddp"]["world_size"] == 2 and outputs["ddp"]["outcome"] == "succeeded"
    assert outputs["ddp"]["losses"] == pytest.approx(outputs["single"]["losses"], rel=1e-4)
    single = load_file(str(tmp_path / "single/jobs/ft-ddp/final/adapter_model.safetensors"))
    ddp = load_file(str(tmp_path / "ddp/jobs/ft-ddp/final/adapter_model.safetensors"))
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-5)
