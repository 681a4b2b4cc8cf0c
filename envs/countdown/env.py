"""CountdownEnv (``areal/Countdown-v0``): reach the target with the given numbers and + - * /.

Observation at reset: ``[{"role": "system", ...}?, {"role": "user", "content": prompt}]``
with ``prompt = prompt_template.format(numbers="30 100 93", target=23, rule="exactly once")``.
The agent answers with one assistant message; the episode then terminates with reward
1.0 if its expression (the last ``<answer>...</answer>`` span, else the whole reply) uses
the numbers by the task's rule and equals the target exactly, else 0.0. The check is a
safe parse, never an ``eval`` (see :mod:`areal_env.envs.countdown.reward`), and a bad
answer of any kind is a 0.0 with a ``reason``, never an exception.

Tasks are generated in code by default (3 numbers in 1-20, a target in 1-100, each number
at most once: small enough for a tiny model to learn), or read from the Game of 24 CSV or
d1's Countdown JSONL (every number exactly once) with ``dataset=<path>``.

Example:
    >>> env = CountdownEnv()
    >>> obs, info = env.reset(options={"task_index": 0})
    >>> [m["role"] for m in obs], info["numbers"], info["target"], info["answer"]
    (['system', 'user'], [2, 1, 9], 7, '9*1-2')
    >>> obs, reward, terminated, truncated, step = env.step("<answer>9-2</answer>")
    >>> reward, terminated, step["valid"], step["reason"]
    (1.0, True, True, None)
    >>> _ = env.reset(options={"task_index": 0})
    >>> step = env.step("(9-2)*1*1")[4]
    >>> step["reason"], step["detail"]
    ('reused_number', '1 used 2 times, given 1')
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from areal_env.data.source import RESET_OPTIONS, choose_task_index
from areal_env.envs.base import AsyncEnv, Message, StepResult
from areal_env.envs.countdown.data import OPS, SYNTHETIC, CountdownTask, build_task_source, solve
from areal_env.envs.countdown.reward import MAX_EXPRESSION_CHARS, score_response
from areal_env.envs.spaces import ChatMessages
from areal_env.resources import ResourceRegistry

DEFAULT_SYSTEM_PROMPT = (
    "Combine the given numbers with +, -, *, / and parentheses into an expression equal "
    "to the target. Put only the expression in <answer></answer>, e.g. <answer>(7-3)*6</answer>."
)
"""The system prompt of Countdown-v0 (None drops it): it states the answer format."""

DEFAULT_PROMPT_TEMPLATE = "Numbers: {numbers}\nTarget: {target}\nUse each number {rule}."
"""The user message; ``{numbers}`` (space-separated), ``{target}`` and ``{rule}`` are filled."""

RULES = {True: "exactly once", False: "at most once"}
"""What ``{rule}`` reads for ``use_all`` True and False."""


class CountdownEnv(AsyncEnv):
    """Single-turn Countdown: one arithmetic expression, checked exactly.

    Args:
        dataset: ``"synthetic"`` (generated in code), or the path of the Game of 24
            ``.csv`` or of a d1 Countdown ``.jsonl`` file.
        num_numbers: numbers per generated task (1-6).
        max_number: generated numbers are drawn from ``[1, max_number]``.
        max_target: generated targets are in ``[1, max_target]``.
        ops: operators the generated solutions use (the reward always accepts all four).
        use_all: the rule; None keeps the data's (generated: each number at most once;
            files: every number exactly once), True/False overrides it.
        system_prompt: content of a leading system message; None for none.
        prompt_template: user message format with ``{numbers}`` and ``{target}``
            (``{rule}`` optional).
        max_expression_chars: longer answers score 0.0 (``too_long``) unparsed.
        data_seed: seed of the generated stream (ignored for files).
        resources: shared-resource registry (unused; accepted like every env).

    Reset picks the task from ``self.np_random``; ``options={"task_index": i}`` picks
    task ``i``. Reset ``info``: ``task_id`` (``"<source>:<index>"``), ``task_index``,
    ``numbers``, ``target``, ``use_all`` and ``answer``: one solution (a generated task's
    own, a file task's found by :func:`~areal_env.envs.countdown.data.solve`; None if it
    has none), which the warm start demonstrates. Step ``info``: ``correct``, ``valid``
    (well-formed, allowed numbers, evaluates), ``reason`` (None or one of
    :data:`~areal_env.envs.countdown.reward.REASONS`), ``detail``, ``expression`` (as
    parsed), ``value`` (exact, as a string such as ``"47/2"``), and the reset keys
    ``numbers``, ``target``, ``use_all``, ``answer``.
    """

    def __init__(
        self,
        dataset: str | Path = SYNTHETIC,
        *,
        num_numbers: int = 3,
        max_number: int = 20,
        max_target: int = 100,
        ops: Sequence[str] = OPS,
        use_all: bool | None = None,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        max_expression_chars: int = MAX_EXPRESSION_CHARS,
        data_seed: int = 0,
        resources: ResourceRegistry | None = None,
    ) -> None:
        super().__init__(resources=resources)
        if not isinstance(dataset, (str, Path)):
            raise ValueError(f"dataset must be {SYNTHETIC!r} or a file path, got {dataset!r}")
        if use_all is not None and not isinstance(use_all, bool):
            raise ValueError(f"use_all must be true, false or null, got {use_all!r}")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ValueError(f"system_prompt must be a str or None, got {system_prompt!r}")
        _check_template(prompt_template)
        chars = max_expression_chars
        if isinstance(chars, bool) or not isinstance(chars, int) or chars < 1:
            raise ValueError(f"max_expression_chars must be an int >= 1, got {chars!r}")
        if isinstance(data_seed, bool) or not isinstance(data_seed, int):
            raise ValueError(f"data_seed must be an int, got {data_seed!r}")
        self.source = build_task_source(
            dataset,
            num_numbers=num_numbers,
            max_number=max_number,
            max_target=max_target,
            ops=ops,
            use_all=use_all,
            data_seed=data_seed,
        )
        self.system_prompt = system_prompt
        self.prompt_template = prompt_template
        self.max_expression_chars = max_expression_chars
        self.observation_space = ChatMessages(roles=("system", "user"), max_messages=2)
        self._task: CountdownTask | None = None
        self._answer: str | None = None

    def demonstration(self) -> list[Message] | None:
        """The gold reply in the format the system prompt asks for: ``<answer>expr</answer>``."""
        if self._answer is None:
            return None
        return [{"role": "assistant", "content": f"<answer>{self._answer}</answer>"}]

    async def _areset(self, options: dict[str, Any]) -> tuple[list[Message], dict[str, Any]]:
        index = self._task_index(options)
        self._task = task = self.source[index]
        self._answer = task.solution or solve(task.numbers, task.target, use_all=task.use_all)
        prompt = self.prompt_template.format(
            numbers=" ".join(map(str, task.numbers)), target=task.target, rule=RULES[task.use_all]
        )
        obs: list[Message] = [{"role": "user", "content": prompt}]
        if self.system_prompt is not None:
            obs.insert(0, {"role": "system", "content": self.system_prompt})
        return obs, {"task_id": f"{self.source.name}:{index}", "task_index": index, **self._facts()}

    async def _astep(self, message: Message) -> StepResult:
        task = self._task
        assert task is not None, "AsyncEnv.astep guarantees a reset came first"
        verdict = score_response(
            message.get("content") or "",
            task.numbers,
            task.target,
            use_all=task.use_all,
            max_chars=self.max_expression_chars,
        )
        info = {
            "correct": verdict.reward == 1.0,
            "valid": verdict.valid,
            "reason": verdict.reason,
            "detail": verdict.detail,
            "expression": verdict.expression,
            "value": None if verdict.value is None else str(verdict.value),
            **self._facts(),
        }
        return [], verdict.reward, True, False, info

    def _facts(self) -> dict[str, Any]:
        assert self._task is not None
        return {
            "numbers": list(self._task.numbers),
            "target": self._task.target,
            "use_all": self._task.use_all,
            "answer": self._answer,
        }

    def _task_index(self, options: dict[str, Any]) -> int:
        return choose_task_index(
            options, size=len(self.source), rng=self.np_random, name=self.source.name
        )


def _check_template(prompt_template: str) -> None:
    sentinels = {"numbers": "\x00n\x00", "target": "\x00t\x00", "rule": "\x00r\x00"}
    try:
        filled = prompt_template.format(**sentinels)
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        raise ValueError(
            "prompt_template must be a format string with the fields {numbers}, {target} "
            f"and optionally {{rule}}, got {prompt_template!r} ({type(e).__name__}: {e})"
        ) from e
    if sentinels["numbers"] not in filled or sentinels["target"] not in filled:
        raise ValueError(
            f"prompt_template must contain {{numbers}} and {{target}}, got {prompt_template!r}"
        )


__all__ = [
    "DEFAULT_PROMPT_TEMPLATE",
    "DEFAULT_SYSTEM_PROMPT",
    "RESET_OPTIONS",
    "RULES",
    "CountdownEnv",
]
