"""tau2's reward, computed from a finished conversation (``src/tau2/evaluator/`` at main).

reward = the product of the components the task's ``reward_basis`` names
(default ``[DB, COMMUNICATE]``):

- **DB**: a fresh "gold" state gets the task's initial state and replays the
  gold ``actions`` (each one's exception ignored); a fresh "predicted" state
  gets the same initial state and replays the conversation's state-changing
  tool calls (agent's and user's). 1 when both the agent-DB and the user-DB
  hashes are equal. Any path to the gold end state passes.
- **ENV_ASSERTION**: every ``env_assertions`` entry holds on the predicted state.
- **COMMUNICATE**: every ``communicate_info`` string occurs, case-insensitively,
  in some assistant text with its commas removed.
- **ACTION**: every gold action matches some tool call of the conversation by
  name and by its ``compare_args`` (:meth:`Action.matches`).
- **NL_ASSERTION**: an LLM judge's verdicts (``judge.py``), passed in as
  ``nl_checks``: 1 when every assertion is met. Without verdicts it is left out
  of the product and reported as ``nl_assertion: None`` (``nl_skipped``); an
  empty or missing list scores 1.0 with no judge, as in tau2.

tau2's edge cases are kept: a run that did not end by the agent or the user
stopping (max steps, too many errors) scores 0; a task without evaluation
criteria scores 1; and when ``actions`` and ``env_assertions`` are both absent
the DB and ENV components are 1 without any replay. Unlike tau2's strict replay
we do not compare replayed tool outputs with recorded ones: the conversation
was produced by these same tools.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from areal_env.envs.tau2.data import RewardType, Task
from areal_env.envs.tau2.domain import DomainData, DomainState, ToolCall, openai_tool_calls

SCORED_ENDINGS = ("agent_stop", "user_stop")
"""Terminations that are scored; any other ending scores 0 (tau2's rule)."""


@dataclass(kw_only=True)
class RewardInfo:
    """The reward and every component, for ``info["reward_info"]``."""

    reward: float
    reward_basis: list[str]
    components: dict[str, float] = field(default_factory=dict)
    """Each evaluated component's score, whether or not the basis names it."""
    db_match: bool | None = None
    env_assertions: list[dict[str, Any]] = field(default_factory=list)
    action_checks: list[dict[str, Any]] = field(default_factory=list)
    communicate_checks: list[dict[str, Any]] = field(default_factory=list)
    nl_assertion: float | None = None
    nl_skipped: bool = False
    """True when the basis names NL_ASSERTION, assertions exist, and no judge scored them."""
    nl_checks: list[dict[str, Any]] = field(default_factory=list)
    """The judge's verdicts: ``{"nl_assertion", "met", "justification"}`` each."""
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        return asdict(self)


def conversation_tool_calls(messages: list[dict[str, Any]]) -> list[ToolCall]:
    """Every well-formed tool call of the conversation, agent's and user's, in order."""
    return [c for m in messages for c in openai_tool_calls(m) if c is not None]


def evaluate(
    task: Task,
    data: DomainData,
    messages: list[dict[str, Any]],
    termination: str,
    nl_checks: list[dict[str, Any]] | None = None,
) -> RewardInfo:
    """Score a finished conversation of ``task`` (see the module docstring).

    Args:
        task: the task played.
        data: its domain's data (fresh states are built from it).
        messages: the whole conversation in OpenAI form, starting with the task's
            message history; user-side tool calls are user messages with
            ``tool_calls``. System messages are ignored.
        termination: how it ended: ``agent_stop``, ``user_stop``, ``max_steps``,
            ``too_many_errors``.
        nl_checks: the NL-assertion judge's verdicts (``"met"`` each), or None
            when no judge scored the task.
    """
    criteria = task.evaluation_criteria
    basis = [b.value for b in criteria.reward_basis] if criteria else []
    if termination not in SCORED_ENDINGS:
        return RewardInfo(reward=0.0, reward_basis=basis, note=f"ended by {termination}")
    if criteria is None:
        return RewardInfo(reward=1.0, reward_basis=basis, note="no evaluation criteria")
    calls = conversation_tool_calls(messages)
    info = RewardInfo(reward=1.0, reward_basis=basis)
    db, env = _env_components(task, data, calls, info)
    comps = {
        RewardType.DB: db,
        RewardType.ENV_ASSERTION: env,
        RewardType.COMMUNICATE: _communicate(criteria.communicate_info or [], messages, info),
        RewardType.ACTION: _action(task, calls, info),
    }
    info.components = {k.value: v for k, v in comps.items()}
    nl = criteria.nl_assertions or []
    if not nl:
        info.nl_assertion = info.components[RewardType.NL_ASSERTION.value] = 1.0
    elif nl_checks is not None:
        info.nl_checks = [dict(c) for c in nl_checks]
        score = float(all(c["met"] for c in nl_checks))
        info.nl_assertion = info.components[RewardType.NL_ASSERTION.value] = score
    elif RewardType.NL_ASSERTION in criteria.reward_basis:
        info.nl_skipped = True
    reward = 1.0
    for kind in criteria.reward_basis:
        if kind.value in info.components:
            reward *= info.components[kind.value]
    info.reward = reward
    return info


def gold_state(task: Task, data: DomainData) -> DomainState:
    """The task's initial state with its gold actions replayed (their errors ignored)."""
    state = data.new_state()
    state.apply(task.initial_state)
    criteria = task.evaluation_criteria
    for action in (criteria.actions if criteria else None) or []:
        try:
            state.make_tool_call(ToolCall(action.name, action.arguments, action.requestor))
        except Exception:
            pass
    return state


def predicted_state(task: Task, data: DomainData, calls: list[ToolCall]) -> DomainState:
    """The task's initial DBs with the conversation's state-changing calls replayed.

    ``calls`` include the ones of the task's message history, so ``apply`` gets
    the initial state without its history (replayed exactly once, from ``calls``).
    """
    state = data.new_state()
    initial = task.initial_state
    if initial is not None:
        state.apply(initial.model_copy(update={"message_history": None}))
    state.replay(calls)
    return state


def _env_components(
    task: Task, data: DomainData, calls: list[ToolCall], info: RewardInfo
) -> tuple[float, float]:
    criteria = task.evaluation_criteria
    assert criteria is not None
    if criteria.actions is None and criteria.env_assertions is None:
        info.db_match = True
        return 1.0, 1.0
    gold, predicted = gold_state(task, data), predicted_state(task, data, calls)
    info.db_match = (
        gold.db_hash() == predicted.db_hash() and gold.user_db_hash() == predicted.user_db_hash()
    )
    env = 1.0
    for assertion in criteria.env_assertions or []:
        met = predicted.check(assertion)
        info.env_assertions.append({**assertion.model_dump(), "met": met})
        env *= float(met)
    return float(info.db_match), env


def _communicate(wanted: list[str], messages: list[dict[str, Any]], info: RewardInfo) -> float:
    texts = [
        m["content"].lower().replace(",", "")
        for m in messages
        if m.get("role") == "assistant" and isinstance(m.get("content"), str) and m["content"]
    ]
    score = 1.0
    for s in wanted:
        met = any(s.lower() in t for t in texts)
        info.communicate_checks.append({"info": s, "met": met})
        score *= float(met)
    return score


def _action(task: Task, calls: list[ToolCall], info: RewardInfo) -> float:
    criteria = task.evaluation_criteria
    assert criteria is not None
    score = 1.0
    for action in criteria.actions or []:
        met = any(action.matches(c.name, c.arguments) for c in calls)
        info.action_checks.append({"action_id": action.action_id, "name": action.name, "met": met})
        score *= float(met)
    return score
