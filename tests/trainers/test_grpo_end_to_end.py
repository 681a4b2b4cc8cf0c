"""A few real GRPO steps on CPU: warm start, rollouts, training, weight sync, resume."""

from __future__ import annotations

import json

import pytest
import torch

from areal_env.checkpoint import list_checkpoints
from areal_env.metrics import read_metrics
from areal_env.testing import SMALL_RUN_OVERRIDES, SMALL_WARM_START_OVERRIDES, TINY_MODEL_OVERRIDES
from areal_env.trainers import grpo

SMALL = [
    *TINY_MODEL_OVERRIDES,
    *SMALL_WARM_START_OVERRIDES,
    *SMALL_RUN_OVERRIDES,
    "checkpoint.every_steps=2",
]

REQUIRED_KEYS = {
    "step",
    "rollout/reward_mean",
    "rollout/staleness_mean",
    "time/step_s",
    "throughput/gen_tokens_per_s",
}


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(next(folder.glob("*.safetensors"))))


def test_grpo_steps_change_weights_advance_version_and_write_outputs(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # CI disables wandb; this run uses offline
    out = tmp_path / "run"
    argv = [*SMALL, "train.steps=3", "metrics.wandb_mode=offline", f"output_dir={out}"]
    assert grpo.main(argv) == 0
    assert list((out / "wandb").glob("offline-run-*")), "wandb offline run files missing"
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(REQUIRED_KEYS <= r.keys() for r in rows)
    assert [r["train/version"] for r in rows] == [1.0, 2.0, 3.0]
    assert (out / "curves.png").stat().st_size > 0
    assert (out / "config.yaml").exists()
    initial, final = _weights(out / "tiny_model"), _weights(out / "final_model")
    assert any(not torch.equal(initial[k], final[k]) for k in initial)
    last = list_checkpoints(out)[-1]
    state = torch.load(last / "trainer_state.pt", weights_only=False)
    assert (state["step"], state["version"]) == (3, 3)


def test_grpo_steps_on_mixed_rewards_train_the_policy_and_sync_it(tmp_path):
    from areal_env.testing import PARITY_ENV_ID, register_test_envs

    register_test_envs()
    out = tmp_path / "run"
    argv = [
        *SMALL,
        "train.steps=2",
        f"env.id={PARITY_ENV_ID}",
        "warm_start.enabled=false",
        f"output_dir={out}",
    ]
    assert grpo.main(argv) == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert all(r["train/rows"] > 0 for r in rows), "every step must have trained rows"
    assert all(0 < r["rollout/reward_mean"] < 1 for r in rows)
    initial, final = _weights(out / "tiny_model"), _weights(out / "final_model")
    changed = [k for k in initial if not torch.equal(initial[k], final[k])]
    assert changed, "GRPO steps left every weight unchanged"


def test_resume_after_interrupted_run_continues_from_saved_step(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_push = grpo.push_weights

    async def crash_at_step_3(backend, engine, scheduler, *, version, weights_dir=None):
        if version == 3:
            raise KeyboardInterrupt("simulated interruption")
        await real_push(backend, engine, scheduler, version=version, weights_dir=weights_dir)

    monkeypatch.setattr(grpo, "push_weights", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        grpo.main([*SMALL, "train.steps=4", f"output_dir={out}"])
    assert [p.name for p in list_checkpoints(out)] == ["step_000002"]
    saved = torch.load(list_checkpoints(out)[-1] / "trainer_state.pt", weights_only=False)

    monkeypatch.setattr(grpo, "push_weights", real_push)
    assert grpo.main([*SMALL, "train.steps=4", f"output_dir={out}", "--resume"]) == 0
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    state = torch.load(list_checkpoints(out)[-1] / "trainer_state.pt", weights_only=False)
    assert (state["step"], state["version"]) == (4, 4)
    # The data stream went on from the saved position instead of starting over.
    assert state["scheduler"]["data_position"] > saved["scheduler"]["data_position"]
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 4


def test_bad_config_exits_with_a_message_naming_the_key(capsys):
    assert grpo.main(["rollout.nope=1"]) == 2
    assert "rollout.nope" in capsys.readouterr().err


def test_progress_off_a_terminal_writes_a_few_lines_not_a_frame_per_step(tmp_path, capsys):
    from areal_env.testing import PARITY_ENV_ID, register_test_envs

    register_test_envs()
    out = tmp_path / "run"
    argv = [
        *SMALL,
        "train.steps=6",
        f"env.id={PARITY_ENV_ID}",
        "warm_start.enabled=false",
        "metrics.progress=true",
        f"output_dir={out}",
    ]
    assert grpo.main(argv) == 0
    frames = capsys.readouterr().err.count("grpo:")
    assert 1 <= frames <= 3, f"{frames} progress frames for 6 steps"
