"""The trainer on the tiny model: it learns, it resumes exactly, it stops when told."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from runtime.spec import WorkSpec
from runtime.trainer import NullReporter, latest_checkpoint, train

from .conftest import SAMPLES, spec_dict


class StopAfter(NullReporter):
    def __init__(self, step: int) -> None:
        self.step = step
        self.seen = 0

    def stepped(self, report) -> None:
        self.seen = report.step

    def stop_reason(self) -> str | None:
        return "cancelled" if self.seen >= self.step else None


def test_lora_fine_tune_lowers_the_loss_on_the_sample_dataset(storage):
    # given the sample chat dataset and a held-out file evaluated twice
    spec = WorkSpec.from_dict(
        {
            **spec_dict("ft-learn", epochs=2, n_evals=2),
            "validation_file": str(SAMPLES / "chat_validation.jsonl"),
        }
    )

    # when it trains
    result = train(spec, storage=storage, progress_bar=False)

    # then the training loss and the held-out loss fall, and an adapter is stored
    assert result.status == "succeeded"
    assert result.steps == result.total_steps == 14
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert last < first - 0.5, result.losses
    evals = [result.eval_losses[step] for step in sorted(result.eval_losses)]
    assert len(evals) == 2 and evals[1] < evals[0]
    final = storage.root / "jobs/ft-learn/final"
    assert (final / "adapter_model.safetensors").is_file()
    assert (final / "adapter_config.json").is_file()


def test_resume_from_a_mid_run_checkpoint_matches_the_uninterrupted_run(storage):
    # given one run straight through, with checkpoints at steps 3 and 7
    whole = WorkSpec.from_dict(spec_dict("ft-whole", n_checkpoints=2, lora_dropout=0.1))
    straight = train(whole, storage=storage, progress_bar=False)
    assert straight.total_steps == 7

    # when the same job (another output) stops after its first checkpoint and resumes
    split = WorkSpec.from_dict(spec_dict("ft-split", n_checkpoints=2, lora_dropout=0.1))
    first = train(split, storage=storage, reporter=StopAfter(3), progress_bar=False)
    assert first.status == "stopped" and first.steps == 3
    assert latest_checkpoint(storage, "jobs/ft-split")[0] == 3
    second = train(split, storage=storage, progress_bar=False)

    # then the resumed half starts at step 4 and ends where the straight run did
    assert second.resumed_from == 3 and second.status == "succeeded"
    assert first.losses + second.losses == pytest.approx(straight.losses, rel=1e-5)
    a = load_file(str(storage.root / "jobs/ft-whole/final/adapter_model.safetensors"))
    b = load_file(str(storage.root / "jobs/ft-split/final/adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_a_stopped_run_keeps_its_last_checkpoint_and_writes_no_final_model(storage):
    spec = WorkSpec.from_dict(spec_dict("ft-stop", n_checkpoints=3))
    result = train(spec, storage=storage, reporter=StopAfter(3), progress_bar=False)
    assert result.status == "stopped" and result.steps == 3
    # checkpoints fall at steps 2, 4 and 7: the one at 2 is kept, nothing after
    assert latest_checkpoint(storage, "jobs/ft-stop") == (2, "jobs/ft-stop/checkpoints/step-000002")
    assert not storage.exists("jobs/ft-stop/final")


def test_full_fine_tuning_saves_whole_weights_that_load(storage):
    from transformers import AutoModelForCausalLM

    spec = WorkSpec.from_dict(
        spec_dict("ft-full", lora=False, learning_rate=1e-3, max_seq_length=256, batch_size=8)
    )
    result = train(spec, storage=storage, progress_bar=False)
    assert result.status == "succeeded"
    assert result.losses[-1] < result.losses[0]
    model = AutoModelForCausalLM.from_pretrained(str(storage.root / "jobs/ft-full/final"))
    assert sum(p.numel() for p in model.parameters()) > 500_000
