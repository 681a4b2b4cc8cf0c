r"""PythonToolEnv (``areal/PythonTool-v0``): math problems with a sandboxed ``python`` tool.

Reset shows the problem (after a system prompt that states the format). Each assistant
message either calls the tool (one or several calls, run concurrently) and gets one tool
message per call back, or answers: a message without tool calls ends the episode
(``terminated``) with reward 1.0 when Math-Verify finds its final answer (the last
``\boxed{}``, else the stated answer) equal to the gold one, as in Math-v0
(:func:`~areal_env.envs.math.reward.score_response`). The ``max_turns``-th message that
still calls tools ends it ``truncated`` with reward 0.0.

The code runs in :class:`~areal_env.sandbox.Sandbox`; the reply is its stdout and stderr
(cut to ``max_output_chars`` with a note), or what stopped it (a traceback, a timeout, the
memory limit): either way the episode goes on. A call that cannot run (unknown tool,
arguments that are not a JSON object, a missing ``code``, more than ``max_calls_per_turn``
calls in one message) is answered ``error: ...`` and counted. Where bubblewrap cannot be
used, construction raises :class:`~areal_env.sandbox.SandboxUnavailableError` saying what
to install, unless ``sandbox={"allow_unsandboxed": True}`` opts into running model code
without isolation.

:class:`ToolMathEnv` is the shared machinery (tasks, the loop, counting, the reward,
demonstrations); ``areal/Calculator-v0`` (``envs/calculator/env.py``) is the other subclass.

Step ``info`` (counts so far in the episode): ``tool_calls``, ``tool_errors`` (calls
answered with an error: malformed, or the program failed), ``malformed_calls`` (not run);
on the answer also ``correct`` and ``answer`` (the gold one).

Example:
    >>> env = PythonToolEnv(sandbox={"timeout_s": 5, "pool_size": 1})
    >>> obs, info = env.reset(options={"task_index": 0})
    >>> code = '{"code": "print(%s)"}' % obs[-1]["content"].rstrip("=")
    >>> call = {"id": "c1", "type": "function", "function": {"name": "python", "arguments": code}}
    >>> obs, *_ = env.step({"role": "assistant", "content": None, "tool_calls": [call]})
    >>> obs[0]["content"] == info["answer"]
    True
    >>> env.step("\\boxed{%s}" % info["answer"])[1]
    1.0
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from areal_env.data.source import RESET_OPTIONS, choose_task_index
from areal_env.data.synthetic import validate_arithmetic_params
from areal_env.envs.base import AsyncEnv, Message, StepResult
from areal_env.envs.math.reward import instant_score, score_response
from areal_env.envs.python_tool.data import (
    SYNTHETIC,
    TaskSource,
    ToolMathTask,
    build_task_source,
    load_math_jsonl,
)
from areal_env.envs.python_tool.tools import (
    PYTHON_TOOL,
    LoopSandboxes,
    config_key,
    read_argument,
    result_text,
    sandbox_config,
)
from areal_env.envs.spaces import ChatMessages
from areal_env.resources import ResourceRegistry
from areal_env.rollout.activity import phase

PYTHON_SYSTEM_PROMPT = (
    "Solve the problem. You can run Python code with the python tool (standard library "
    "only; each call is a fresh program and only what it prints comes back). When you know "
    "the answer, reply without a tool call and put the final answer in \\boxed{}."
)
"""The system prompt of PythonTool-v0 (None drops it): it states the tool and the format."""


MAX_TOOL_MESSAGES = 1024
"""Bound of the observation space: one tool message per call of one assistant message."""


@dataclass(frozen=True, slots=True)
class ToolReply:
    """What the env answers to one tool call."""

    content: str
    """The tool message's text."""
    ok: bool
    """The call ran and succeeded."""
    malformed: bool = False
    """The call could not run at all (counted in ``malformed_calls``)."""


class ToolMathEnv(AsyncEnv):
    r"""Math tasks solved with one tool, answered in ``\boxed{}``; see the module docstring.

    Subclasses set the class attributes ``tool`` (the OpenAI schema), ``argument`` (its
    one string argument) and implement :meth:`_call_tool` and :meth:`_gold_calls`.

    Args:
        dataset: ``"synthetic"`` (Math-v0's generated arithmetic) or the path of a GSM8K-
            or MATH-500-format JSONL file (detected from its keys).
        max_operand: largest operand of generated tasks.
        ops: operators of generated tasks, from ``+``, ``-``, ``*``.
        max_turns: assistant messages before the episode is cut.
        max_calls_per_turn: tool calls one message may make; more are answered with an error.
        system_prompt: content of a leading system message; None for none.
        prompt_template: user message format; must contain ``{question}``.
        data_seed: seed of the generated stream (ignored for files).
        resources: the registry shared objects (file tasks, sandboxes) come from.

    Reset picks the task from ``self.np_random``; ``options={"task_index": i}`` picks task
    ``i``. Reset ``info``: ``task_id`` (``"<source>:<index>"``), ``task_index``, ``answer``.
    """

    tool: ClassVar[dict[str, Any]]
    """OpenAI function schema of the env's one tool."""
    argument: ClassVar[str]
    """The tool's one required string argument."""

    def __init__(
        self,
        dataset: str | Path = SYNTHETIC,
        *,
        max_operand: int = 99,
        ops: Sequence[str] = ("+", "-"),
        max_turns: int = 4,
        max_calls_per_turn: int = 8,
        system_prompt: str | None = None,
        prompt_template: str = "{question}",
        data_seed: int = 0,
        resources: ResourceRegistry | None = None,
    ) -> None:
        super().__init__(resources=resources)
        if not isinstance(dataset, (str, Path)):
            raise ValueError(f"dataset must be {SYNTHETIC!r} or a file path, got {dataset!r}")
        ops = validate_arithmetic_params(max_operand, ops)
        _check_positive_int("max_turns", max_turns)
        _check_positive_int("max_calls_per_turn", max_calls_per_turn)
        if max_calls_per_turn > MAX_TOOL_MESSAGES:
            raise ValueError(f"max_calls_per_turn must be <= {MAX_TOOL_MESSAGES}")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ValueError(f"system_prompt must be a str or None, got {system_prompt!r}")
        _check_template(prompt_template)
        if isinstance(data_seed, bool) or not isinstance(data_seed, int):
            raise ValueError(f"data_seed must be an int, got {data_seed!r}")
        self.source: TaskSource = build_task_source(
            dataset, max_operand=max_operand, ops=ops, data_seed=data_seed, load=self._load_file
        )
        self.max_turns, self.max_calls_per_turn = max_turns, max_calls_per_turn
        self.system_prompt, self.prompt_template = system_prompt, prompt_template
        self.observation_space = ChatMessages(max_messages=MAX_TOOL_MESSAGES)
        self._task: ToolMathTask | None = None
        self._calls = self._errors = self._malformed = 0

    @property
    def tools(self) -> list[dict[str, Any]]:
        """The env's one tool schema."""
        return [self.tool]

    def demonstration(self) -> list[Message] | None:
        r"""A gold episode: the tool calls of :meth:`_gold_calls`, then ``\boxed{answer}``."""
        if self._task is None:
            return None
        messages: list[Message] = []
        for values in self._gold_calls(self._task):
            calls = [
                {
                    "id": f"call_{len(messages)}_{i}",
                    "type": "function",
                    "function": {
                        "name": self.tool["function"]["name"],
                        "arguments": json.dumps({self.argument: value}),
                    },
                }
                for i, value in enumerate(values)
            ]
            messages.append({"role": "assistant", "content": None, "tool_calls": calls})
        return [*messages, {"role": "assistant", "content": f"\\boxed{{{self._task.answer}}}"}]

    # ---- hooks of subclasses -----------------------------------------------------------

    async def _call_tool(self, value: str) -> ToolReply:
        """Run one well-formed call with its argument ``value``."""
        raise NotImplementedError(f"{type(self).__name__} must implement _call_tool")

    def _gold_calls(self, task: ToolMathTask) -> list[list[str]]:
        """Argument values of the gold tool calls, one list per assistant message."""
        raise NotImplementedError(f"{type(self).__name__} must implement _gold_calls")

    # ---- the episode -------------------------------------------------------------------

    async def _areset(self, options: dict[str, Any]) -> tuple[list[Message], dict[str, Any]]:
        index = self._task_index(options)
        self._task = task = self.source[index]
        self._calls = self._errors = self._malformed = 0
        obs: list[Message] = [
            {"role": "user", "content": self.prompt_template.format(question=task.question)}
        ]
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
        calls = message.get("tool_calls") or []
        if calls:
            replies = await self._run_calls(calls)
            self._calls += len(replies)
            self._errors += sum(not r.ok for r in replies)
            self._malformed += sum(r.malformed for r in replies)
            obs = [
                {"role": "tool", "tool_call_id": str(call.get("id", "")), "content": r.content}
                for call, r in zip(calls, replies, strict=True)
            ]
            cut = self.num_steps + 1 >= self.max_turns
            return obs, 0.0, False, cut, self._info()
        gold, text = self._task.answer, message.get("content") or ""
        reward = instant_score(text, gold)
        if reward is None:
            # Off the loop: a verifier call can take milliseconds. A RewardError propagates.
            with phase("reward"):
                reward = await asyncio.to_thread(score_response, text, gold)
        return [], reward, True, False, {**self._info(), "correct": reward == 1.0, "answer": gold}

    async def _run_calls(self, calls: list[dict[str, Any]]) -> list[ToolReply]:
        """Answer every call of one message, concurrently; replies in call order.

        A call failing to run at all (the sandbox host broke) is the episode's failure:
        its siblings are cancelled and its exception propagates to the rollout layer.
        """

        async def answer(i: int, call: dict[str, Any]) -> ToolReply:
            if i >= self.max_calls_per_turn:
                return _refused(
                    f"too many tool calls in one message (at most {self.max_calls_per_turn}); "
                    "this one was not run"
                )
            value, error = read_argument(call, self.tool["function"]["name"], self.argument)
            if error is not None:
                return _refused(error)
            with phase("tool", self.tool["function"]["name"]):
                return await self._call_tool(value)

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(answer(i, c)) for i, c in enumerate(calls)]
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        return [t.result() for t in tasks]

    def _info(self) -> dict[str, Any]:
        return {
            "tool_calls": self._calls,
            "tool_errors": self._errors,
            "malformed_calls": self._malformed,
        }

    def _load_file(self, dataset: str | Path) -> TaskSource:
        # Many envs are built per run (one per episode): parse each file once per registry.
        path = Path(dataset).resolve()
        stat = path.stat()
        key = ("math_tools/file", str(path), stat.st_mtime_ns, stat.st_size)
        return self.resources.get(key, lambda: load_math_jsonl(path))

    def _task_index(self, options: dict[str, Any]) -> int:
        return choose_task_index(
            options, size=len(self.source), rng=self.np_random, name=self.source.name
        )


class PythonToolEnv(ToolMathEnv):
    """Math problems with a sandboxed ``python`` tool; see the module docstring.

    Args:
        dataset: ``"synthetic"`` or a GSM8K- / MATH-500-format JSONL path.
        sandbox: :class:`~areal_env.sandbox.SandboxConfig` keys (``timeout_s``,
            ``memory_mb``, ``pool_size``, ``allow_unsandboxed``...); the config's defaults
            for the rest. Envs with equal settings share one warm pool per event loop
            through ``resources``, closed when the registry is.
        max_output_chars: a program's reply is cut to about this many characters (the
            sandbox's ``max_output_bytes`` is where it stops the program).
        system_prompt: defaults to :data:`PYTHON_SYSTEM_PROMPT`.
        **kwargs: the rest of :class:`ToolMathEnv`'s arguments.

    Raises:
        SandboxUnavailableError: this machine cannot sandbox code and ``sandbox`` does
            not opt out (see :class:`~areal_env.sandbox.Sandbox`).
        ValueError: an unknown or invalid ``sandbox`` key, or another bad argument.
    """

    tool = PYTHON_TOOL
    argument = "code"

    def __init__(
        self,
        dataset: str | Path = SYNTHETIC,
        *,
        sandbox: Any = None,
        max_output_chars: int = 2000,
        system_prompt: str | None = PYTHON_SYSTEM_PROMPT,
        resources: ResourceRegistry | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, system_prompt=system_prompt, resources=resources, **kwargs)
        _check_positive_int("max_output_chars", max_output_chars)
        self.max_output_chars = max_output_chars
        config = sandbox_config(sandbox)
        self.sandboxes: LoopSandboxes = self.resources.get(
            ("python_tool/sandbox", config_key(config)), lambda: LoopSandboxes(config)
        )

    @property
    def sandboxed(self) -> bool:
        """False only when model code runs without isolation (``allow_unsandboxed``)."""
        return self.sandboxes.sandboxed

    async def _call_tool(self, value: str) -> ToolReply:
        result = await self.sandboxes.run(value)
        return ToolReply(result_text(result, max_chars=self.max_output_chars), result.ok)

    def _gold_calls(self, task: ToolMathTask) -> list[list[str]]:
        """One program printing each gold calculation; none for MATH-500 (answer only).

        A generated task's program prints its own expression (``print(437*82)``), a
        GSM8K task's prints the annotated calculations of its solution, one per line.
        MATH-500 solutions are prose, so that demonstration is the boxed answer alone.
        """
        if not task.calculations:
            return []
        return [["\n".join(f"print({c})" for c in task.calculations)]]


def _refused(error: str) -> ToolReply:
    return ToolReply(f"error: {error}", ok=False, malformed=True)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _check_template(prompt_template: Any) -> None:
    sentinel = "\x00question\x00"
    try:
        filled = prompt_template.format(question=sentinel)
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        raise ValueError(
            "prompt_template must be a format string whose only field is {question}, "
            f"got {prompt_template!r} ({type(e).__name__}: {e})"
        ) from e
    if sentinel not in filled:
        raise ValueError(f"prompt_template must contain {{question}}, got {prompt_template!r}")


__all__ = [
    "MAX_TOOL_MESSAGES",
    "PYTHON_SYSTEM_PROMPT",
    "RESET_OPTIONS",
    "PythonToolEnv",
    "ToolMathEnv",
    "ToolReply",
]
