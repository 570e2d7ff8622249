"""Starting a run from another job's checkpoint: only its weights, from step 0."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from runtime.spec import WorkSpec
from runtime.trainer import _init_weights, model_load, train, world_init

from .conftest import spec_dict
from .test_training import StopAfter


def test_a_run_started_from_a_checkpoint_begins_with_its_weights_at_step_zero(storage):
    # given a job trained to the end of its data, checkpoint at its last step
    source = train(WorkSpec.from_dict(spec_dict("ft-src")), storage=storage, progress_bar=False)
    assert source.status == "succeeded" and source.total_steps == 7
    checkpoint = storage.root / "jobs/ft-src/checkpoints/step-000007"

    # when a new job (another seed and learning rate) starts from that checkpoint
    raw = spec_dict("ft-next", seed=99, learning_rate=1e-3)
    spec = WorkSpec.from_dict({**raw, "init_from": str(checkpoint)})

    # then, before any step, its adapter is the source's to the last bit
    model = model_load(spec, world_init())
    _init_weights(model, checkpoint, spec)
    loaded = get_peft_model_state_dict(model)
    saved = load_file(str(checkpoint / "adapter_model.safetensors"))
    assert saved.keys() == loaded.keys()
    for name, tensor in saved.items():
        torch.testing.assert_close(loaded[name].float().cpu(), tensor.float(), rtol=0, atol=0)

    # and its run starts at step 0, its first loss where the source ended, far below
    # where the source began (a fresh adapter), and trains its own whole schedule
    result = train(spec, storage=storage, progress_bar=False)
    assert result.resumed_from == 0 and result.steps == result.total_steps == 7
    source_end = sum(source.losses[-3:]) / 3
    assert result.losses[0] < source.losses[0] - 0.5, (source.losses, result.losses)
    assert abs(result.losses[0] - source_end) < 0.5, (source.losses, result.losses)
    fresh = train(
        WorkSpec.from_dict(spec_dict("ft-fresh", seed=99, learning_rate=1e-3)),
        storage=storage,
        progress_bar=False,
    )
    assert fresh.losses[0] > result.losses[0] + 0.5


def test_a_run_refuses_a_checkpoint_of_another_training_type(storage):
    train(WorkSpec.from_dict(spec_dict("ft-lora")), storage=storage, progress_bar=False)
    checkpoint = storage.root / "jobs/ft-lora/checkpoints/step-000007"
    spec = WorkSpec.from_dict(
        {**spec_dict("ft-full", lora=False, learning_rate=1e-5), "init_from": str(checkpoint)}
    )
    with pytest.raises(RuntimeError, match="training_type"):
        train(spec, storage=storage, progress_bar=False)


def test_a_resume_of_the_jobs_own_checkpoint_wins_over_init_from(storage):
    train(WorkSpec.from_dict(spec_dict("ft-a")), storage=storage, progress_bar=False)
    source = storage.root / "jobs/ft-a/checkpoints/step-000007"
    raw = {**spec_dict("ft-b", n_checkpoints=2), "init_from": str(source)}
    spec = WorkSpec.from_dict(raw)
    first = train(spec, storage=storage, reporter=StopAfter(3), progress_bar=False)
    assert first.status == "stopped" and first.resumed_from == 0
    second = train(spec, storage=storage, progress_bar=False)
    assert second.resumed_from == 3 and second.status == "succeeded"
