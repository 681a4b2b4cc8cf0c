"""MathEnv (``areal/Math-v0``): one question, one answer, reward 1 if it is right.

Observation at reset: ``[{"role": "system", ...}?, {"role": "user", "content": prompt}]``
where ``prompt = prompt_template.format(question=...)``. The agent answers with one
assistant message; the episode then terminates with reward 1.0 if Math-Verify
finds the reply's final answer equal to the gold one, else 0.0, and an empty
observation. When the verifier cannot give a verdict (timeout, crashed worker),
``step``/``astep`` raise :class:`~areal_env.errors.RewardError`, which the rollout
layer counts as a failed episode rather than a wrong answer.

Example:
    >>> env = MathEnv(max_operand=9, system_prompt="Answer with a number.")
    >>> obs, info = env.reset(options={"task_index": 0})
    >>> [m["role"] for m in obs], sorted(info)
    (['system', 'user'], ['answer', 'task_id', 'task_index'])
    >>> obs, reward, terminated, truncated, info = env.step(info["answer"])
    >>> obs, reward, terminated, truncated, info["correct"]
    ([], 1.0, True, False, True)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from areal_env.data.jsonl import MathTask
from areal_env.data.source import RESET_OPTIONS, choose_task_index
from areal_env.data.synthetic import validate_arithmetic_params
from areal_env.envs.base import AsyncEnv, Message, StepResult
from areal_env.envs.math.data import SYNTHETIC, build_task_source
from areal_env.envs.math.reward import instant_score, score_response
from areal_env.envs.spaces import ChatMessages
from areal_env.resources import ResourceRegistry
from areal_env.rollout.activity import phase


class MathEnv(AsyncEnv):
    """Single-turn math word problems or arithmetic, scored by Math-Verify.

    Args:
        dataset: ``"synthetic"`` (arithmetic generated in code) or the path of a
            GSM8K-format JSONL file.
        max_operand: largest operand of synthetic tasks.
        ops: operators of synthetic tasks, from ``+``, ``-``, ``*``.
        system_prompt: content of a leading system message; none when None.
        prompt_template: user message format; must contain ``{question}``.
        data_seed: seed of the synthetic task stream (ignored for files).

    Reset picks the task from ``self.np_random`` (so ``reset(seed=s)`` always
    gives the same task); ``options={"task_index": i}`` picks task ``i`` instead.
    Reset ``info``: ``task_id`` (``"<source>:<index>"``, e.g. ``synthetic-0:17`` or
    ``gsm8k/test:12``), ``task_index`` and ``answer`` (the gold string).
    Step ``info``: ``correct`` (bool) and ``answer``. A step whose reward cannot
    be computed raises :class:`~areal_env.errors.RewardError`.
    """

    def __init__(
        self,
        dataset: str | Path = SYNTHETIC,
        *,
        max_operand: int = 99,
        ops: Sequence[str] = ("+", "-"),
        system_prompt: str | None = None,
        prompt_template: str = "{question}",
        data_seed: int = 0,
        resources: ResourceRegistry | None = None,
    ) -> None:
        super().__init__(resources=resources)
        if not isinstance(dataset, (str, Path)):
            raise ValueError(f"dataset must be {SYNTHETIC!r} or a file path, got {dataset!r}")
        ops = validate_arithmetic_params(max_operand, ops)
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ValueError(f"system_prompt must be a str or None, got {system_prompt!r}")
        _check_template(prompt_template)
        if isinstance(data_seed, bool) or not isinstance(data_seed, int):
            raise ValueError(f"data_seed must be an int, got {data_seed!r}")
        self.source = build_task_source(
            dataset, max_operand=max_operand, ops=ops, data_seed=data_seed
        )
        self.system_prompt = system_prompt
        self.prompt_template = prompt_template
        self.observation_space = ChatMessages(roles=("system", "user"), max_messages=2)
        self._task: MathTask | None = None

    async def _areset(self, options: dict[str, Any]) -> tuple[list[Message], dict[str, Any]]:
        index = self._task_index(options)
        self._task = task = self.source[index]
        obs = [{"role": "user", "content": self.prompt_template.format(question=task.question)}]
        if self.system_prompt is not None:
            obs.insert(0, {"role": "system", "content": self.system_prompt})
        info = {
            "task_id": f"{self.source.name}:{index}",
            "task_index": index,
            "answer": task.answer,
        }
        return obs, info

    async def _astep(self, message: Message) -> StepResult:
        assert self._task is not None, "AsyncEnv.astep guarantees a reset came first"
        gold = self._task.answer
        reward = instant_score(message["content"], gold)
        if reward is None:
            # Off the event loop: a verifier call can take milliseconds, a bad one seconds.
            # A RewardError (timeout, crashed verifier) propagates: it is no verdict.
            with phase("reward"):
                reward = await asyncio.to_thread(score_response, message["content"], gold)
        return [], reward, True, False, {"correct": reward == 1.0, "answer": gold}

    def _task_index(self, options: dict[str, Any]) -> int:
        return choose_task_index(
            options, size=len(self.source), rng=self.np_random, name=self.source.name
        )


def _check_template(prompt_template: str) -> None:
    sentinel = "\x00question\x00"
    try:
        filled = prompt_template.format(question=sentinel)
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        raise ValueError(
            f"prompt_template must be a format string whose only field is {{question}}, "
            f"got {prompt_template!r} ({type(e).__name__}: {e})"
        ) from e
    if sentinel not in filled:
        raise ValueError(f"prompt_template must contain {{question}}, got {prompt_template!r}")


__all__ = ["RESET_OPTIONS", "MathEnv"]
