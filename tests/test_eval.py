"""python -m areal_env.eval: end-to-end runs on the tiny model, pass@k, failures, config."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import math
from dataclasses import fields
from pathlib import Path

import gymnasium as gym
import pytest

from areal_env.config import load_config, to_yaml
from areal_env.envs.base import AsyncEnv
from areal_env.eval import (
    TRAINER_ONLY_EVAL_KEYS,
    TRAINER_ONLY_KEYS,
    EvalConfig,
    EvalSettings,
    format_summary,
    main,
    mean_pass_at_k,
    mean_pass_hat_k,
    pass_at_k,
    pass_hat_k,
    play,
)
from areal_env.testing import TINY_MODEL_OVERRIDES
from areal_env.trainers.config import GRPOConfig
from areal_env.types import Trajectory

REPO = Path(__file__).resolve().parent.parent
QUIET = [*TINY_MODEL_OVERRIDES, "eval.progress=false"]
LINE_FIELDS = {
    "task_index",
    "task_seed",
    "sample_index",
    "task_id",
    "reward",
    "correct",
    "num_turns",
    "truncated",
    "messages",
    "info",
    "error",
}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_lines(lines: list[dict], *, tasks: int, samples: int, offset: int) -> None:
    assert len(lines) == tasks * samples
    assert sorted((r["task_index"], r["sample_index"]) for r in lines) == list(
        itertools.product(range(tasks), range(samples))
    )
    for r in lines:
        assert LINE_FIELDS <= r.keys(), LINE_FIELDS - r.keys()
        assert r["task_seed"] == offset + r["task_index"]
        assert r["error"] is None
        assert 0.0 <= r["reward"] <= 1.0
        assert r["correct"] == (r["reward"] >= 1.0)
        assert r["messages"][-1]["role"] in ("assistant", "tool")
        assert isinstance(r["info"], dict) and isinstance(r["truncated"], bool)


def _check_summary_matches_lines(summary: dict, lines: list[dict], ks: list[int]) -> None:
    assert summary["episodes"] == len(lines)
    assert summary["failed"] == sum(r["error"] is not None for r in lines)
    done = [r for r in lines if r["error"] is None]
    assert summary["mean_reward"] == pytest.approx(sum(r["reward"] for r in done) / len(done))
    assert summary["mean_turns"] == pytest.approx(sum(r["num_turns"] for r in done) / len(done))
    per_task: dict[int, list[bool]] = {}
    for r in lines:
        per_task.setdefault(r["task_index"], []).append(r["correct"])
    for k in ks:
        assert summary[f"pass@{k}"] == pytest.approx(mean_pass_at_k(list(per_task.values()), k))


# --------------------------------------------------------------------------- end to end


def test_math_from_the_trainer_config_file_on_the_embedded_model(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "--config",
        str(REPO / "examples" / "math" / "grpo.yaml"),  # has train, rollout, algorithm, ...
        *QUIET,
        "inference.sampling.max_new_tokens=6",
        "eval.num_tasks=3",
        "eval.samples_per_task=3",
        "eval.pass_k=[2]",
        "eval.seed_offset=100",
        f"output_dir={out}",
    ]
    assert main(argv) == 0
    lines = _lines(out / "eval.jsonl")
    _check_lines(lines, tasks=3, samples=3, offset=100)
    system = "Solve the problem. Put the final answer in \\boxed{}."
    assert all(r["messages"][0] == {"role": "system", "content": system} for r in lines)
    assert all(r["num_turns"] == 1 and r["info"]["answer"] for r in lines)
    summary = json.loads((out / "eval.summary.json").read_text())
    assert (summary["tasks"], summary["samples_per_task"], summary["env"]) == (
        3,
        3,
        "areal/Math-v0",
    )
    _check_summary_matches_lines(summary, lines, ks=[1, 2, 3])
    assert summary["model"] == str(out / "tiny_model")  # model.path unset: built offline
    assert "train" not in summary["config"] and summary["config"]["eval"]["num_tasks"] == 3
    printed = capsys.readouterr().out
    for label in ("mean reward", "pass@1", "pass@2", "pass@3", "mean turns", "failed 0"):
        assert label in printed


def test_search_with_the_tool_calling_agent(tmp_path):
    jsonl = tmp_path / "results" / "search.jsonl"
    argv = [
        *QUIET,
        "env.id=areal/Search-v0",
        "env.kwargs.num_entities=10",
        "agent.name=tool_calling",
        "agent.kwargs.max_turns=2",
        "model.tiny.max_position_embeddings=2048",  # tool results make long prompts
        "inference.sampling.max_new_tokens=8",
        "eval.num_tasks=2",
        "eval.samples_per_task=2",
        f"eval.output_jsonl={jsonl}",
        f"output_dir={tmp_path / 'run'}",
    ]
    assert main(argv) == 0
    lines = _lines(jsonl)
    _check_lines(lines, tasks=2, samples=2, offset=30_000_000)
    assert all(1 <= r["num_turns"] <= 2 for r in lines)
    assert all(r["task_id"].startswith("search:") and r["info"]["answer"] for r in lines)
    summary = json.loads((tmp_path / "results" / "search.summary.json").read_text())
    assert (summary["agent"], summary["env"]) == ("tool_calling", "areal/Search-v0")
    _check_summary_matches_lines(summary, lines, ks=[1, 2])


# --------------------------------------------------------------------------- failures

FLAKY_ID = "areal-test/EvalFlaky-v0"


class FlakyEnv(AsyncEnv):
    """Reward 1 on tasks with an even number; step raises on odd ones (on all: fail_all)."""

    def __init__(self, fail_all: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.fail_all = fail_all

    async def _areset(self, options):
        self.n = int(self.np_random.integers(100))
        return [{"role": "user", "content": f"{self.n}?"}], {"task_id": f"flaky:{self.n}"}

    async def _astep(self, message):
        if self.n % 2 or self.fail_all:
            raise RuntimeError(f"boom on task {self.n}")
        return [], 1.0, True, False, {}


@pytest.fixture
def flaky_env_id():
    if FLAKY_ID not in gym.registry:
        gym.register(id=FLAKY_ID, entry_point=FlakyEnv)
    return FLAKY_ID


def test_episodes_that_raise_are_recorded_as_failures_and_the_eval_goes_on(
    tmp_path, flaky_env_id, tiny_model_dir, capsys
):
    out = tmp_path / "run"
    argv = [
        "eval.progress=false",
        f"model.path={tiny_model_dir}",  # a saved HF folder, as a run's final_model is
        f"env.id={flaky_env_id}",
        "eval.num_tasks=6",
        "eval.samples_per_task=2",
        "eval.max_retries=1",
        f"output_dir={out}",
    ]
    assert main(argv) == 0
    lines = _lines(out / "eval.jsonl")
    assert len(lines) == 12
    failed = [r for r in lines if r["error"] is not None]
    assert 0 < len(failed) < len(lines), "the seeds must give both kinds of task"
    for r in failed:
        assert r["error"].startswith("RuntimeError: boom on task")
        assert (r["reward"], r["correct"], r["messages"], r["attempts"]) == (None, False, None, 2)
        assert r["error_kinds"] == ["RuntimeError", "RuntimeError"]
    assert all(r["reward"] == 1.0 and r["attempts"] == 1 for r in lines if r["error"] is None)
    summary = json.loads((out / "eval.summary.json").read_text())
    assert summary["model"] == str(tiny_model_dir) and not (out / "tiny_model").exists()
    assert summary["failed"] == len(failed)
    assert summary["errors"] == {"RuntimeError": 2 * len(failed)}
    assert summary["mean_reward"] == 1.0  # over finished episodes only
    # A task fails on every sample or on none, so pass@k is the share of good tasks.
    good_tasks = len({r["task_index"] for r in lines if r["error"] is None})
    assert summary["pass@1"] == summary["pass@2"] == pytest.approx(good_tasks / 6)
    _check_summary_matches_lines(summary, lines, ks=[1, 2])
    assert f"failed {len(failed)}" in capsys.readouterr().out


def test_an_eval_where_every_episode_fails_exits_1_naming_the_error(tmp_path, flaky_env_id, capsys):
    argv = [*QUIET, f"env.id={flaky_env_id}", "env.kwargs.fail_all=true", f"output_dir={tmp_path}"]
    assert main([*argv, "eval.num_tasks=2", "eval.samples_per_task=1"]) == 1
    assert "every episode failed; first error: RuntimeError: boom" in capsys.readouterr().err
    summary = json.loads((tmp_path / "eval.summary.json").read_text())
    assert (summary["failed"], summary["mean_reward"], summary["pass@1"]) == (2, None, 0.0)


async def test_play_keeps_max_concurrent_episodes_in_flight_and_no_more():
    running, peak, release = 0, 0, asyncio.Event()

    async def episode_fn(task_seed: int, sample_index: int) -> Trajectory:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await release.wait()
        finally:
            running -= 1
        return Trajectory(reward=1.0, task_id=str(task_seed))

    settings = EvalSettings(num_tasks=5, samples_per_task=2, max_concurrent=3, progress=False)
    out = io.StringIO()
    task = asyncio.create_task(play(episode_fn, settings, out))
    for _ in range(5):
        await asyncio.sleep(0)
    try:
        assert (running, peak, out.getvalue()) == (3, 3, "")
    finally:
        release.set()
    records = await task
    assert peak == 3 and len(records) == 10 == len(out.getvalue().splitlines())


# --------------------------------------------------------------------------- pass@k


@pytest.mark.parametrize(
    ("n", "c", "k", "want"),
    [
        (1, 0, 1, 0.0),
        (1, 1, 1, 1.0),
        (4, 1, 1, 0.25),
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 3, 5, 1 - 21 / 252),  # C(7,5)=21, C(10,5)=252
        (6, 5, 2, 1.0),  # n - c < k: every pair holds a correct sample
    ],
)
def test_pass_at_k_hand_computed(n, c, k, want):
    assert pass_at_k(n, c, k) == pytest.approx(want)


def _brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_equals_the_share_of_k_subsets_holding_a_correct_sample():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(_brute_force_pass_at_k(n, c, k)), (
                    n,
                    c,
                    k,
                )


def test_pass_at_k_rejects_impossible_counts_and_averages_over_tasks():
    for n, c, k in [(3, 4, 1), (3, 1, 0), (3, 1, 4), (3, -1, 1)]:
        with pytest.raises(ValueError, match="pass_at_k"):
            pass_at_k(n, c, k)
    assert mean_pass_at_k([[True, False, False], [True, True, True]], k=2) == pytest.approx(
        (pass_at_k(3, 1, 2) + 1.0) / 2
    )
    assert math.isclose(mean_pass_at_k([[False] * 4] * 3, k=4), 0.0)


@pytest.mark.parametrize(
    ("n", "c", "k", "want"),
    [
        (1, 0, 1, 0.0),
        (1, 1, 1, 1.0),
        (4, 1, 1, 0.25),  # pass^1 = pass@1 = c / n
        (4, 2, 2, 1 / 6),  # C(2,2)/C(4,2)
        (5, 3, 2, 0.3),  # C(3,2)/C(5,2) = 3/10
        (10, 7, 5, 21 / 252),  # C(7,5)=21, C(10,5)=252
        (6, 1, 2, 0.0),  # c < k: no pair is all correct
        (4, 4, 4, 1.0),
    ],
)
def test_pass_hat_k_hand_computed(n, c, k, want):
    assert pass_hat_k(n, c, k) == pytest.approx(want)


def _brute_force_pass_hat_k(n: int, c: int, k: int) -> float:
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(all(samples[i] for i in s) for s in subsets) / len(subsets)


def test_pass_hat_k_equals_the_share_of_k_subsets_that_are_all_correct():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                got = pass_hat_k(n, c, k)
                assert got == pytest.approx(_brute_force_pass_hat_k(n, c, k)), (n, c, k)
                assert got <= pass_at_k(n, c, k) + 1e-12
            assert pass_hat_k(n, c, 1) == pytest.approx(pass_at_k(n, c, 1))


def test_pass_hat_k_rejects_impossible_counts_and_averages_over_tasks():
    for n, c, k in [(3, 4, 1), (3, 1, 0), (3, 1, 4), (3, -1, 1)]:
        with pytest.raises(ValueError, match="pass_hat_k"):
            pass_hat_k(n, c, k)
    tasks = [[True, True, False], [True, True, True], [False, True, False]]
    assert mean_pass_hat_k(tasks, k=2) == pytest.approx((1 / 3 + 1.0 + 0.0) / 3)
    with pytest.raises(ValueError, match="at least one task"):
        mean_pass_hat_k([], k=1)


def test_tau2_mock_with_the_scripted_user_reports_pass_hat_k_for_the_domain(
    tmp_path, shared_data, monkeypatch, capsys
):
    monkeypatch.setenv("TAU2_DATA_DIR", str(shared_data))
    jsonl = tmp_path / "tau2.jsonl"
    argv = [
        *QUIET,
        "env.id=areal/Tau2-v0",
        "env.kwargs.domain=mock",
        "env.kwargs.split=base",
        "env.kwargs.user=scripted",
        "agent.name=tool_calling",
        "agent.kwargs.max_turns=2",
        "model.tiny.max_position_embeddings=2048",  # the policy and tool schemas
        "inference.sampling.max_new_tokens=8",
        "eval.num_tasks=2",
        "eval.samples_per_task=2",
        f"eval.output_jsonl={jsonl}",
        f"output_dir={tmp_path / 'run'}",
    ]
    assert main(argv) == 0
    lines = _lines(jsonl)  # not _check_lines: a tau2 episode may end on the user's ###STOP###
    assert sorted((r["task_index"], r["sample_index"]) for r in lines) == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    ]
    assert all(r["error"] is None and 0.0 <= r["reward"] <= 1.0 for r in lines)
    summary = json.loads((tmp_path / "tau2.summary.json").read_text())
    assert summary["domain"] == "mock"
    correct = [[r["correct"] for r in lines if r["task_index"] == i] for i in range(2)]
    for k in (1, 2):
        assert summary[f"pass^{k}"] == pytest.approx(mean_pass_hat_k(correct, k))
        assert summary[f"pass^{k}"] <= summary[f"pass@{k}"]
    assert summary["pass^1"] == pytest.approx(summary["pass@1"])
    printed = capsys.readouterr().out
    assert "pass^2" in printed and "(mock)" in printed
    assert "pass^1" in format_summary(summary)


# --------------------------------------------------------------------------- config


def test_a_runs_saved_trainer_config_loads_and_its_trainer_keys_are_ignored(tmp_path):
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(GRPOConfig()))
    argv = ["--config", str(saved), "rollout.n_samples=16", "train.steps=5", "eval.num_tasks=7"]
    cfg = load_config(EvalConfig, argv)
    assert cfg.ignored_keys() == list(TRAINER_ONLY_KEYS)
    assert cfg.eval.num_tasks == 7 and cfg.eval.samples_per_task == 4  # not rollout.n_samples
    assert cfg.rollout["n_samples"] == 16  # carried, never used
    assert not set(TRAINER_ONLY_KEYS) & cfg.used().keys()


def test_the_eval_tree_is_the_trainers_plus_eval():
    trainer = {f.name for f in fields(GRPOConfig)}
    ours = {f.name for f in fields(EvalConfig)}
    # A new trainer section must be either used here or listed as ignored, or a
    # trainer's config.yaml would stop loading in eval.
    assert trainer <= ours, trainer - ours
    assert ours == trainer  # the trainer's own `eval` section: evaluation during training
    shared = trainer - set(TRAINER_ONLY_KEYS) - {"output_dir", "eval"}
    for name in shared:  # the same defaults, so an eval measures what the trainer samples
        assert getattr(EvalConfig(), name) == getattr(GRPOConfig(), name), name
    # Each key of the trainer's eval section is either ignored here or means the same.
    theirs = {f.name for f in fields(GRPOConfig().eval)}
    assert theirs <= {f.name for f in fields(EvalSettings)}, theirs
    for name in theirs - set(TRAINER_ONLY_EVAL_KEYS):
        assert getattr(EvalSettings(), name) == getattr(GRPOConfig().eval, name), name


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.num_tasks=0", "eval.num_tasks must be >= 1"),
        ("eval.samples_per_task=0", "eval.samples_per_task must be >= 1"),
        ("eval.max_concurrent=0", "eval.max_concurrent must be >= 1"),
        ("eval.pass_k=[8]", r"eval.pass_k values must be in \[1, eval.samples_per_task=4\]"),
        ("eval.correct_threshold=nan", "eval.correct_threshold must be a finite number"),
        ("eval.seed_offset=-1", "eval.seed_offset must be >= 0"),
        ("eval.episode_timeout_s=0", "eval.episode_timeout_s must be > 0"),
        ("eval.output_jsonl=out.txt", "eval.output_jsonl must end in .jsonl"),
        ("eval.num_task=3", "unknown config key 'eval.num_task'"),
        ("eval.num_tasks=many", "bad value for config key 'eval.num_tasks'"),
        ("agent.name=nobody", "agent.name must be one of"),
    ],
)
def test_bad_config_values_are_rejected_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(EvalConfig, [override])


def test_a_bad_env_agent_or_model_fails_at_start_up_with_exit_2(tmp_path, capsys):
    assert main([f"output_dir={tmp_path}", "env.id=areal/Nope-v0"]) == 2
    assert "config error: env.id 'areal/Nope-v0' is not registered" in capsys.readouterr().err
    assert not (tmp_path / "tiny_model").exists()
    assert main([f"output_dir={tmp_path}", "agent.kwargs.max_turns=3"]) == 2
    assert "agent.kwargs do not fit agent 'single_turn'" in capsys.readouterr().err
    assert main([f"model.path={tmp_path / 'no_such_model'}"]) == 2
    assert "config error: model.path: cannot load" in capsys.readouterr().err


def test_docs_list_every_eval_key_as_the_dataclass_defines_it():
    from areal_env.config_reference import config_rows

    page = (REPO / "docs" / "eval.md").read_text()
    for key, typ, default, doc in config_rows(EvalSettings, prefix="eval."):
        assert doc, f"{key} has no attribute docstring"
        row = f"| `{key}` | {typ} | `{default}` | {doc.replace('|', '/')} |"
        assert row in page, f"docs/eval.md: row of {key} is missing or stale; want:\n{row}"
