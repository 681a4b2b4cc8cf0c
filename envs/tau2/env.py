"""Tau2Env (``areal/Tau2-v0``): a tau2-bench customer-service task as an async Gym env.

Reset picks a task of the split (``options={"task_id": ID}`` or ``{"task_index": i}``
pick one), sets up its initial state, and shows the agent the domain policy as
the system prompt, the task's earlier messages (if any) and the user's opening
message; ``env.tools`` are the domain's agent tools as OpenAI schemas. Each step
takes one assistant message:

- with tool calls: they run in order on the domain's tools; the tool messages
  come back (an error is tau2's ``Error: ...`` text, counted in
  ``info["tool_errors"]``); calling ``transfer_to_human_agents`` ends the
  episode (agent stop), as the user cannot go on with a human;
- with text only: it goes to the user; the user's answer comes back, and the
  episode ends when the user stops (``###STOP###`` and tau2's other tokens); a
  text containing ``###STOP###`` ends it from the agent's side.

The episode is scored by ``reward.py`` when it ends: ``info["reward_info"]``
holds every component. ``max_steps`` assistant messages cut it (``truncated``),
``max_errors`` tool errors end it; both score 0, as tau2's premature endings do.
Reset ``options["user_lines"]`` script the default user (``user.py``).

Example (needs the tau2 data, so shown rather than run; the tests play it)::

    env = Tau2Env(domain="mock")                      # data from $TAU2_DATA_DIR
    obs, info = env.reset(options={"task_id": "update_task_1"})
    args = '{"task_id": "task_1", "status": "completed"}'
    call = {"id": "c1", "type": "function",
            "function": {"name": "update_task_status", "arguments": args}}
    env.step({"role": "assistant", "content": None, "tool_calls": [call]})  # tool message
    env.step("Done: task_1 is completed.")[1:3]        # user stops -> (1.0, True)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from areal_env.data.source import choose_task_index
from areal_env.envs.base import AsyncEnv, Message, StepResult
from areal_env.envs.tau2.data import RewardType, Task, resolve_data_dir, select_split
from areal_env.envs.tau2.domain import (
    DomainData,
    DomainState,
    get_domain,
    openai_tool_calls,
    to_openai_messages,
)
from areal_env.envs.tau2.judge import NLJudge
from areal_env.envs.tau2.reward import SCORED_ENDINGS, evaluate
from areal_env.envs.tau2.user import STOP, UserSimulator, is_stop, make_user
from areal_env.envs.tau2.user_cache import CallCache
from areal_env.resources import ResourceRegistry
from areal_env.rollout.activity import phase

TRANSFER_TOOL = "transfer_to_human_agents"
MAX_USER_TOOL_ROUNDS = 10
"""User tool-call messages in a row before the user must speak (guards a looping user)."""


class Tau2Env(AsyncEnv):
    """A tau2 domain's tasks, played against a simulated user (see the module docstring).

    Args:
        domain: ``"mock"`` for now (airline, retail, telecom to come).
        split: a split of ``split_tasks.json`` (``train``, ``test``, ``base``...).
        data_dir: the folder containing ``tau2/domains/``; None reads ``TAU2_DATA_DIR``.
        user: ``"scripted"``; ``{"kind": "llm", "model", "base_url", "api_key",
            "client", "llm_args"}`` for tau2's LLM user (``llm_user.py``; ``"llm"``
            alone with a replay cache); or any
            :class:`~areal_env.envs.tau2.user.UserSimulator`.
        user_cache: a JSONL file recording the LLM user's and the judge's calls
            (``user_cache.py``).
        user_cache_mode: ``"auto"`` (replay, else call and record), ``"record"``
            or ``"replay"`` (never calls a model; a miss raises).
        judge: the NL-assertion judge (``judge.py``): ``{"model", "base_url",
            "api_key", "client", "llm_args"}`` (``"llm"`` alone with a replay cache)
            or an :class:`~areal_env.envs.tau2.judge.NLJudge`; None leaves
            NL_ASSERTION out of the reward (``nl_skipped``).
        max_steps: assistant messages before the episode is cut (reward 0).
        max_errors: tool errors that end the episode (reward 0); tau2's default is 10.
        resources: where the loaded domain data is shared.
    """

    def __init__(
        self,
        domain: str = "mock",
        *,
        split: str = "base",
        data_dir: str | Path | None = None,
        user: str | dict[str, Any] | UserSimulator = "scripted",
        user_cache: str | Path | None = None,
        user_cache_mode: str = "auto",
        judge: str | dict[str, Any] | NLJudge | None = None,
        max_steps: int = 30,
        max_errors: int = 10,
        resources: ResourceRegistry | None = None,
    ) -> None:
        super().__init__(resources=resources)
        for name, value in (("max_steps", max_steps), ("max_errors", max_errors)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        spec = get_domain(domain)
        root = resolve_data_dir(data_dir).resolve()
        self.data: DomainData = self.resources.get(
            ("tau2", str(root), domain), lambda: DomainData.load(spec, root)
        )
        self.tasks = select_split(self.data.tasks, self.data.splits, split)
        self.domain, self.split = domain, split
        self.max_steps, self.max_errors = max_steps, max_errors
        cache = None
        if user_cache is not None:
            path = Path(user_cache).expanduser().resolve()
            cache = self.resources.get(
                ("tau2_call_cache", str(path), user_cache_mode),
                lambda: CallCache(path, user_cache_mode),
            )
        self.user = make_user(user, data_dir=root, cache=cache, resources=self.resources)
        self.judge: NLJudge | None = (
            judge
            if judge is None or isinstance(judge, NLJudge)
            else NLJudge.from_config(judge, cache=cache)
        )
        self._task: Task | None = None
        self._state: DomainState | None = None
        self._messages: list[Message] = []
        self._tool_calls = self._tool_errors = 0

    async def aclose(self) -> None:
        """Close what the user and the judge hold (their endpoint clients)."""
        close = getattr(self.user, "aclose", None)
        if close is not None:
            await close()
        if self.judge is not None:
            await self.judge.aclose()

    @property
    def tools(self) -> list[dict[str, Any]]:
        """The domain's agent tools as OpenAI function schemas."""
        return self.data.domain.tools.schemas()

    @property
    def task(self) -> Task | None:
        """The current task (None before the first reset)."""
        return self._task

    @property
    def messages(self) -> list[Message]:
        """The whole conversation so far, user-side tool calls included (what is scored)."""
        return list(self._messages)

    def demonstration(self) -> list[Message] | None:
        """Gold assistant messages: each gold agent action, then every communicate_info.

        Tasks whose gold path has user-side actions need ``user_lines`` as well
        (see ``gold_user_lines``); without them the user stops after the text.
        """
        if self._task is None:
            return None
        return gold_assistant_messages(self._task)

    async def _areset(self, options: dict[str, Any]) -> tuple[list[Message], dict[str, Any]]:
        user_options = {k: options.pop(k) for k in ("user_lines",) if k in options}
        index = self._task_index(options)
        self._task = task = self.tasks[index]
        self._state = self.data.new_state()
        self._state.apply(task.initial_state)
        self._tool_calls = self._tool_errors = 0
        history = to_openai_messages(
            (task.initial_state.message_history if task.initial_state else None) or []
        )
        self._messages = [{"role": "system", "content": self.data.policy}, *history]
        user_tools = self.data.domain.user_tools.schemas() if self.data.domain.user_tools else []
        await self.user.start(task, tools=user_tools, options=user_options)
        opening = await self._user_turn()
        obs = [*self._messages[: len(history) + 1], opening]
        info = {
            "task_id": f"tau2/{self.domain}:{task.id}",
            "task_index": index,
            "tau2_task_id": task.id,
            "domain": self.domain,
            "reward_basis": [b.value for b in task.evaluation_criteria.reward_basis]
            if task.evaluation_criteria
            else [],
        }
        return obs, info

    async def _astep(self, message: Message) -> StepResult:
        assert self._state is not None, "AsyncEnv.astep guarantees a reset came first"
        self._messages.append(_clean(message))
        obs: list[Message] = []
        ending: str | None = None
        if message.get("tool_calls"):
            obs, transferred = self._run_agent_calls(message)
            if transferred:
                ending = "agent_stop"
            elif self._tool_errors >= self.max_errors:
                ending = "too_many_errors"
        elif STOP in (message.get("content") or ""):
            ending = "agent_stop"
        else:
            reply = await self._user_turn()
            obs = [reply]
            if is_stop(reply):
                ending = "user_stop"
        if ending is None and self.num_steps + 1 >= self.max_steps:
            return obs, 0.0, False, True, self._info(ending="max_steps")
        if ending is None:
            return obs, 0.0, False, False, self._info()
        return obs, *(await self._finish(ending))

    def _run_agent_calls(self, message: Message) -> tuple[list[Message], bool]:
        assert self._state is not None
        obs, transferred = [], False
        for raw, call in zip(message["tool_calls"], openai_tool_calls(message), strict=True):
            call_id = str(raw.get("id") or "") if isinstance(raw, dict) else ""
            self._tool_calls += 1
            if call is None:
                content, error = _bad_call_text(raw), True
            else:
                result = self._state.respond(call)
                content, error = result.content, result.error
                transferred |= call.name == TRANSFER_TOOL and not error
            self._tool_errors += int(error)
            tool_msg = {"role": "tool", "tool_call_id": call_id, "content": content}
            self._messages.append(tool_msg)
            obs.append(tool_msg)
        return obs, transferred

    async def _user_turn(self) -> Message:
        """Ask the user until it says something to the agent, running its own tool calls."""
        assert self._state is not None
        for _ in range(MAX_USER_TOOL_ROUNDS):
            with phase("user", type(self.user).__name__):
                reply = _clean(await self.user.reply(list(self._messages)))
            self._messages.append(reply)
            if not reply.get("tool_calls"):
                return reply
            for raw, call in zip(reply["tool_calls"], openai_tool_calls(reply), strict=True):
                if call is None:
                    content = _bad_call_text(raw)
                else:
                    content = self._state.respond(call).content
                self._messages.append(
                    {"role": "tool", "tool_call_id": call.id if call else "", "content": content}
                )
        stop = {"role": "user", "content": STOP}
        self._messages.append(stop)
        return stop

    async def _finish(self, ending: str) -> tuple[float, bool, bool, dict[str, Any]]:
        assert self._task is not None
        task, criteria = self._task, self._task.evaluation_criteria
        nl_checks = None
        if (
            self.judge is not None
            and ending in SCORED_ENDINGS
            and criteria is not None
            and criteria.nl_assertions
            and RewardType.NL_ASSERTION in criteria.reward_basis
        ):
            with phase("reward", "judge"):
                nl_checks = await self.judge.judge(task.id, self._messages, criteria.nl_assertions)
        info = evaluate(task, self.data, self._messages, ending, nl_checks)
        return info.reward, True, False, self._info(ending=ending, reward_info=info.to_dict())

    def _info(self, **extra: Any) -> dict[str, Any]:
        return {"tool_calls": self._tool_calls, "tool_errors": self._tool_errors, **extra}

    def _task_index(self, options: dict[str, Any]) -> int:
        if "task_id" in options:
            task_id = options.pop("task_id")
            ids = [t.id for t in self.tasks]
            if task_id not in ids:
                raise ValueError(
                    f"options['task_id']={task_id!r} is not a task of tau2 {self.domain}/"
                    f"{self.split}; e.g. {ids[:5]}"
                )
            if options:
                raise ValueError(f"unknown reset options {sorted(options)} next to task_id")
            return ids.index(task_id)
        return choose_task_index(
            options, size=len(self.tasks), rng=self.np_random, name=f"tau2 {self.domain}"
        )


def _clean(message: Message) -> Message:
    """A plain copy of a chat message (keeps role, content, tool_calls and call ids)."""
    out: Message = {"role": message["role"], "content": message.get("content")}
    if message.get("tool_calls"):
        out["tool_calls"] = list(message["tool_calls"])
    return out


def _bad_call_text(raw: Any) -> str:
    function = raw.get("function") if isinstance(raw, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        return "Error: the tool call has no function name"
    return f"Error: the arguments of tool '{name}' are not a JSON object"


def gold_assistant_messages(task: Task) -> list[Message]:
    """The agent's side of a gold run: one message per gold agent action, then the facts.

    The last message says every ``communicate_info`` string (or a closing line);
    when the gold path transfers to a human, that call's message says them, since
    the transfer ends the episode.
    """
    messages: list[Message] = []
    criteria = task.evaluation_criteria
    for i, action in enumerate((criteria.actions if criteria else None) or []):
        if action.requestor != "assistant":
            continue
        call = {
            "id": f"gold_{i}",
            "type": "function",
            "function": {"name": action.name, "arguments": json.dumps(action.arguments)},
        }
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    facts = (criteria.communicate_info if criteria else None) or []
    text = " ".join(f"{s}." for s in facts) if facts else "Is there anything else?"
    for m in messages:
        if m["tool_calls"][0]["function"]["name"] == TRANSFER_TOOL:
            # The transfer ends the episode, so what must be said goes with it.
            m["content"] = text
            return messages
    messages.append({"role": "assistant", "content": text})
    return messages


def gold_user_lines(task: Task) -> list[str | dict[str, Any]]:
    """Scripted-user lines that make the gold user-side actions (telecom's device calls)."""
    criteria = task.evaluation_criteria
    actions = (criteria.actions if criteria else None) or []
    return [
        {"tool_calls": [{"name": a.name, "arguments": a.arguments}]}
        for a in actions
        if a.requestor == "user"
    ]
