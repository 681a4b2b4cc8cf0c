"""Test doubles shipped with the library: build every test on these.

* :class:`ScriptedEngine`: an InferenceEngine that replays fixed token outputs
  with fixed logprobs and a settable weight version;
* :func:`char_tokenizer`: the offline character tokenizer with a chat template;
* :func:`build_tiny_model`: the offline tiny Qwen2 model (re-exported);
* :class:`ParityEnv`: a single-turn env whose reward a random model earns about
  half the time, so every GRPO group is mixed and every step has a gradient.

Example:
    >>> import asyncio
    >>> from areal_env.types import GenerationRequest
    >>> engine = ScriptedEngine(replies=[[5, 6]], logprob=-0.5)
    >>> asyncio.run(engine.agenerate(GenerationRequest(input_ids=(1,)))).output_logprobs
    [-0.5, -0.5]
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from areal_env.envs.base import AsyncEnv
from areal_env.inference.replay import ReplayEngine
from areal_env.models.tiny import build_tiny_model, build_tokenizer
from areal_env.types import (
    GenerationResult,
    Sample,
    SamplingParams,
)

__all__ = [
    "PARITY_ENV_ID",
    "SMALL_RUN_OVERRIDES",
    "SMALL_WARM_START_OVERRIDES",
    "TINY_MODEL_OVERRIDES",
    "ONE_ENTITY_AGENT_OVERRIDES",
    "run_agent_end_to_end",
    "ParityEnv",
    "ScriptedEngine",
    "build_tiny_model",
    "char_tokenizer",
    "make_sample",
    "register_test_envs",
]

PARITY_ENV_ID = "areal-test/Parity-v0"
"""Gymnasium id of :class:`ParityEnv` (registered by :func:`register_test_envs`)."""


TINY_MODEL_OVERRIDES: tuple[str, ...] = (
    "model.tiny.hidden_size=32",
    "model.tiny.num_layers=1",
    "model.tiny.num_heads=2",
    "model.tiny.intermediate_size=64",
)
"""Config overrides for an even smaller embedded model: end-to-end trainer tests in seconds."""

SMALL_RUN_OVERRIDES: tuple[str, ...] = (
    "rollout.batch_size=2",
    "rollout.n_samples=4",
    "rollout.max_concurrent_rollouts=16",
    "metrics.wandb_mode=disabled",
    "metrics.progress=false",
)
"""A short trainer run's rollout and metrics settings: two groups of four a step, no wandb."""

PARITY_LEARNING_OVERRIDES: tuple[str, ...] = (
    *TINY_MODEL_OVERRIDES,
    f"env.id={PARITY_ENV_ID}",
    "warm_start.enabled=false",
    "inference.sampling.max_new_tokens=2",
    "train.lr=3e-3",
    "train.warmup_steps=0",
    "checkpoint.every_steps=0",
    "metrics.wandb_mode=disabled",
    "metrics.progress=false",
    "metrics.plot=false",
)
"""The learning tests' recipe (tests/slow): the tiny model on :class:`ParityEnv` from
scratch, every group mixed from step 1; add the batch shape, steps and output_dir."""


def assert_reward_rose(rows: Sequence[dict[str, Any]], *, by: float, window: int = 5) -> None:
    """Fail unless the mean reward of the last ``window`` steps beats the first's by ``by``.

    ``rows`` are a run's metrics rows (``areal_env.metrics.read_metrics``): the check
    of the learning tests (tests/slow).
    """
    rewards = [r["rollout/reward_mean"] for r in rows]
    first, last = statistics.fmean(rewards[:window]), statistics.fmean(rewards[-window:])
    assert last > first + by, (
        f"reward did not rise: first {window} steps {first:.2f}, last {window} {last:.2f}"
    )


SMALL_WARM_START_OVERRIDES: tuple[str, ...] = (
    "warm_start.max_steps=4",
    "warm_start.eval_every=2",
    "warm_start.eval_episodes=8",
    "warm_start.num_demos=32",
    "warm_start.batch_size=16",
)
"""A warm start of four SFT steps: enough to exercise it, not to learn the task."""


def make_sample(
    prompt: Sequence[int],
    output: Sequence[int],
    *,
    version: int = 0,
    logprob: float = -1.0,
    temperature: float = 1.0,
) -> Sample:
    """A one-turn ``Sample``: ``prompt`` then ``output`` as if sampled at ``temperature``.

    Example:
        >>> s = make_sample([1, 2], [3], version=4)
        >>> s.loss_mask, s.versions, s.logprobs
        ([0, 0, 1], [-1, -1, 4], [0.0, 0.0, -1.0])
    """
    sample = Sample()
    sample.append_prompt(list(prompt))
    result = GenerationResult(
        request_id="scripted",
        input_ids=tuple(prompt),
        output_ids=list(output),
        output_logprobs=[logprob] * len(output),
        output_versions=[version] * len(output),
        finish_reason="stop",
    )
    sample.append_generation(result, SamplingParams(temperature=temperature))
    return sample


def char_tokenizer():  # -> PreTrainedTokenizerFast
    """The embedded character tokenizer (no model needed)."""
    return build_tokenizer()


class ScriptedEngine(ReplayEngine):
    """Replays ``replies`` in order (cycling), one per request: the engine of tests.

    See :class:`~areal_env.inference.replay.ReplayEngine`; ``requests`` and
    ``updates`` record what the code under test asked of it.
    """


class ParityEnv(AsyncEnv):
    """Reward 1.0 when the reply's first character has an even code point.

    A random-weight model earns it about half the time, so end-to-end training
    tests see mixed groups (non-zero advantages) from the first step, without
    any warm start. ``info["answer"]`` is a valid reply, for warm-start tests.

    Example:
        >>> env = ParityEnv()
        >>> _ = env.reset(seed=0)
        >>> env.step("b")[1], ParityEnv().reset(seed=0)[1]["answer"]
        (1.0, 'b')
    """

    async def _areset(self, options: dict) -> tuple[list[dict], dict]:
        n = int(self.np_random.integers(100))
        return [{"role": "user", "content": f"{n}?"}], {"task_id": f"parity:{n}", "answer": "b"}

    async def _astep(self, message: dict) -> tuple[list[dict], float, bool, bool, dict]:
        text = message.get("content") or ""
        reward = float(bool(text) and ord(text[0]) % 2 == 0)
        return [], reward, True, False, {"correct": reward == 1.0}


def register_test_envs() -> None:
    """Register :class:`ParityEnv` as ``areal-test/Parity-v0`` (idempotent)."""
    import gymnasium

    if PARITY_ENV_ID not in gymnasium.registry:
        gymnasium.register(id=PARITY_ENV_ID, entry_point="areal_env.testing:ParityEnv")


def snapshot_warm_start(monkeypatch: Any) -> dict[str, Any]:
    """Make ``trainers/grpo.py``'s warm start keep what it ended with, for end-to-end tests.

    Returns a dict that, once the run's warm start is over, holds ``"result"``
    (its ``WarmStartResult``) and ``"after_warm_start"`` (a copy of the policy's
    state dict), so a test can tell the GRPO steps' changes from the warm start's.
    """
    import copy

    from areal_env.trainers import grpo

    snapshots: dict[str, Any] = {}
    original = grpo.warm_start

    async def warm_start_then_snapshot(cfg: Any, model: Any, **kw: Any) -> Any:
        result = await original(cfg, model, **kw)
        snapshots["after_warm_start"] = copy.deepcopy(model.state_dict())
        snapshots["result"] = result
        return result

    monkeypatch.setattr(grpo, "warm_start", warm_start_then_snapshot)
    return snapshots


ONE_ENTITY_AGENT_OVERRIDES: tuple[str, ...] = (
    *TINY_MODEL_OVERRIDES,
    "env.kwargs.num_entities=1",
    "warm_start.num_demos=16",
    "warm_start.batch_size=16",
    "warm_start.lr=4e-3",
    "warm_start.eval_every=10",
    "warm_start.accuracy_window=1",  # the agent pipeline is under test, not the stop rule
    "warm_start.eval_episodes=16",
    "warm_start.target_accuracy=0.25",
    "warm_start.max_steps=400",
    "rollout.batch_size=2",
    "rollout.n_samples=8",
    "train.steps=3",
    "metrics.wandb_mode=disabled",
    "metrics.progress=false",
)
"""An agent end-to-end run in seconds: one invented search entity, so the warm start
mixes the groups within a few hundred tiny steps, then three GRPO steps."""


def run_agent_end_to_end(config: Any, out: Any, monkeypatch: Any, *extra: str) -> list[dict]:
    """Run ``trainers/grpo.py`` on a search-agent ``config`` and check what any agent must show.

    The run takes :data:`ONE_ENTITY_AGENT_OVERRIDES`, then ``extra``. Checked: the
    warm start reached its target, three steps were logged, the agent called the
    search tool, some group was mixed and the GRPO steps changed the weights.

    Returns the run's metric rows for the agent-specific checks.
    """
    from pathlib import Path

    from areal_env.metrics import read_metrics
    from areal_env.trainers import grpo

    snapshots = snapshot_warm_start(monkeypatch)
    argv = ["--config", str(config), *ONE_ENTITY_AGENT_OVERRIDES, *extra, f"output_dir={out}"]
    code = grpo.main(argv)
    if code != 0:
        raise AssertionError(f"trainers/grpo.py exited with {code}")
    if not snapshots["result"].reached_target:
        raise AssertionError(f"the warm start missed its target: {snapshots['result']}")
    rows = read_metrics(Path(out) / "metrics.jsonl")
    if [r["step"] for r in rows] != [1, 2, 3]:
        raise AssertionError(f"expected steps 1-3, got {[r['step'] for r in rows]}")
    if not max(r.get("rollout/tool_calls_mean", 0.0) for r in rows) > 0.0:
        raise AssertionError("the agent never called the search tool")
    if not sum(r.get("train/rows", 0) for r in rows) > 0:
        raise AssertionError("no step had a mixed group to train on")
    if not changed_weights(Path(out) / "final_model", snapshots["after_warm_start"]):
        raise AssertionError("the GRPO steps left every weight as the warm start did")
    return rows


def changed_weights(model_dir: Any, state: dict[str, Any]) -> list[str]:
    """Names of the tensors in ``model_dir``'s safetensors that differ from ``state``."""
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    final = load_file(str(next(Path(model_dir).glob("*.safetensors"))))
    return [k for k in final if not torch.equal(final[k], state[k])]
