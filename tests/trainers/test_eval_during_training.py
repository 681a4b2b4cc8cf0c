"""Evaluation during training: eval/... metrics at the due steps, greedy is deterministic."""

from __future__ import annotations

import io
import json

import pytest

from areal_env.config import TrainEvalConfig, load_config
from areal_env.evaluation import evaluate_in_training
from areal_env.inference.registry import start_engine
from areal_env.metrics import read_metrics
from areal_env.testing import (
    PARITY_ENV_ID,
    SMALL_RUN_OVERRIDES,
    TINY_MODEL_OVERRIDES,
    register_test_envs,
)
from areal_env.trainers import grpo
from areal_env.trainers.build import build_components
from areal_env.trainers.config import GRPOConfig
from areal_env.trainers.training_eval import training_eval_episode_fns

RUN = [
    *TINY_MODEL_OVERRIDES,
    *SMALL_RUN_OVERRIDES,
    f"env.id={PARITY_ENV_ID}",
    "warm_start.enabled=false",
    "metrics.tensorboard=false",
    "metrics.plot=false",
    "metrics.dump_episodes_every=0",
    "checkpoint.every_steps=0",
    "eval.episodes=3",
    "eval.k=2",
]

PASS_KEYS = ("eval/greedy_pass@1", "eval/pass@1", "eval/pass@2", "eval/pass^2")


def test_a_run_logs_eval_metrics_at_the_due_steps_beside_the_training_ones(tmp_path):
    register_test_envs()
    out = tmp_path / "run"
    assert grpo.main([*RUN, "train.steps=5", "eval.every_steps=2", f"output_dir={out}"]) == 0
    rows = read_metrics(out / "metrics.jsonl")
    evaluated = [r["step"] for r in rows if any(k.startswith("eval/") for k in r)]
    assert evaluated == [2, 4, 5]  # every 2 steps, and the last step
    for r in rows:
        assert "rollout/reward_mean" in r and r["train/version"] == r["step"]
        assert r["rollout/staleness_max"] <= 1  # the rollout's bound holds through the evals
        if r["step"] in evaluated:
            assert all(0.0 <= r[k] <= 1.0 for k in PASS_KEYS), r
            assert r["eval/pass@1"] <= r["eval/pass@2"]
            assert (r["eval/episodes"], r["eval/failed"]) == (3 * (1 + 2), 0)
    lines = [json.loads(x) for x in (out / grpo.EVAL_EPISODES_FILE).read_text().splitlines()]
    assert sorted({x["step"] for x in lines}) == evaluated
    step2 = [(x["mode"], x["task_seed"]) for x in lines if x["step"] == 2]
    seeds = [TrainEvalConfig().seed_offset + i for i in range(3)]
    assert step2 == [("greedy", s) for s in seeds] + [("sampled", s) for s in seeds for _ in "ab"]


def test_a_resumed_run_evaluates_the_steps_after_its_checkpoint_once(tmp_path):
    """The eval rows of steps that run again after a resume replace the old ones."""
    import shutil

    from areal_env.checkpoint import list_checkpoints

    register_test_envs()
    out = tmp_path / "run"
    run = [*RUN, "train.steps=3", "eval.every_steps=1", f"output_dir={out}"]
    assert grpo.main([*run, "checkpoint.every_steps=2"]) == 0
    shutil.rmtree(list_checkpoints(out)[-1])  # as if killed after step 3's eval
    assert list_checkpoints(out)[-1].name == "step_000002"
    assert grpo.main([*run, "checkpoint.every_steps=2", "recover=true"]) == 0
    lines = [json.loads(x) for x in (out / grpo.EVAL_EPISODES_FILE).read_text().splitlines()]
    per_step = [sum(x["step"] == step for x in lines) for step in (1, 2, 3)]
    assert per_step == [3 * (1 + 2)] * 3  # one eval's episodes per step, none twice
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]


def test_eval_is_off_by_default():
    assert TrainEvalConfig().every_steps == 0
    assert not TrainEvalConfig().due(10, 10)
    with pytest.raises(ValueError, match="eval.k must be >= 1"):
        load_config(GRPOConfig, ["eval.k=0"])


async def test_greedy_eval_is_deterministic_at_the_same_weights(tmp_path):
    register_test_envs()
    cfg = load_config(GRPOConfig, [*RUN, "eval.episodes=4", f"output_dir={tmp_path}"])
    parts = build_components(cfg)
    try:
        await start_engine(parts.engine)
        sampled_fn, greedy_fn = training_eval_episode_fns(
            parts, cfg.eval, cfg.env, cfg.inference.sampling
        )
        runs = []
        for _ in range(2):
            out = io.StringIO()
            metrics = await evaluate_in_training(
                cfg.eval, sampled_fn=sampled_fn, greedy_fn=greedy_fn, out=out
            )
            lines = [json.loads(x) for x in out.getvalue().splitlines()]
            greedy = [
                (x["task_seed"], x["messages"], x["reward"]) for x in lines if x["mode"] == "greedy"
            ]
            runs.append((metrics, greedy, [x for x in lines if x["mode"] == "sampled"]))
    finally:
        await parts.engine.close()
        await parts.resources.aclose()
    (first, greedy1, sampled1), (second, greedy2, sampled2) = runs
    assert len(greedy1) == 4 and greedy1 == greedy2
    assert first["eval/greedy_pass@1"] == second["eval/greedy_pass@1"]
    assert len(sampled1) == len(sampled2) == 4 * 2
    assert parts.engine.version == 0, "an eval must not move the weight version"
