"""Tau2Env foundation + mock domain: toolkit texts, data errors, gold replays, reward.

Mutations tried by hand (each made a test here fail, then was reverted):
- reward.gold_state: skip the gold actions -> test_dropping_last_write_zeroes_db
- reward.predicted_state: keep the history in apply (replayed twice)
  -> test_gold_replay_scores_one[update_task_with_message_history]
- reward._communicate: keep commas in the message -> test_communicate_ignores_commas_and_case
- data.Action.matches: always compare all gold args
  -> test_action_compare_args_empty_matches_by_name
- toolkit.Toolkit.use: skip pydantic validation -> test_toolkit_error_texts (wrong type)
- env._astep: ignore max_errors -> test_too_many_errors_scores_zero
- domain.DomainState.apply: drop initialization_data -> test_initial_state_is_applied
  (the gold replay alone cannot see it: gold and predicted states share the setup)
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from areal_env.envs.tau2.data import Action, resolve_data_dir
from areal_env.envs.tau2.domain import DomainData, get_domain
from areal_env.envs.tau2.env import Tau2Env, gold_assistant_messages, gold_user_lines
from areal_env.envs.tau2.toolkit import DB, Toolkit, ToolType, is_tool, parse_docstring

NEEDS_MORE_THAN_GOLD = {
    # No gold actions at all: ENV_ASSERTION wants task_2 completed, which only the
    # agent's update_task_status(task_2, completed) does.
    "update_task_with_history_and_env_assertions",
    # ENV_ASSERTION wants notif_1 read, which only the user's dismiss_notification
    # (not a gold action) does; and once it is done the user DB differs from the
    # gold one, so in tau2 itself DB and ENV_ASSERTION cannot both be 1.
    "update_task_with_user_tools",
}


@pytest.fixture(scope="module")
def data_dir(shared_data: Path) -> Path:
    return shared_data


@pytest.fixture
def env(data_dir: Path) -> Tau2Env:
    return Tau2Env(domain="mock", data_dir=data_dir)


def mock_task_ids() -> list[str]:
    from tests.conftest import SHARED_DATA

    path = SHARED_DATA / "tau2" / "domains" / "mock" / "tasks.json"
    if not path.exists():
        return ["<no data>"]
    return [t["id"] for t in json.loads(path.read_text())]


def play(env: Tau2Env, task_id: str, messages: list[dict], user_lines=None) -> tuple[float, dict]:
    env.reset(options={"task_id": task_id, "user_lines": user_lines or []})
    reward, info, done = 0.0, {}, False
    for m in messages:
        assert not done, "the episode ended before the gold messages were played"
        _, reward, done, cut, info = env.step(m)
    assert done and not cut
    return reward, info


def call(name: str, **arguments) -> dict:
    function = {"name": name, "arguments": json.dumps(arguments)}
    return {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "function": function}]}


# ---- gold replays ---------------------------------------------------------------------


@pytest.mark.parametrize("task_id", mock_task_ids())
def test_gold_replay_scores_one(env: Tau2Env, task_id: str) -> None:
    task = next(t for t in env.tasks if t.id == task_id)
    reward, info = play(env, task_id, gold_assistant_messages(task), gold_user_lines(task))
    comps = info["reward_info"]["components"]
    basis = info["reward_info"]["reward_basis"]
    scored = [b for b in basis if b in ("DB", "ENV_ASSERTION", "COMMUNICATE", "ACTION")]
    if task_id in NEEDS_MORE_THAN_GOLD:
        assert reward == 0.0 and comps["ENV_ASSERTION"] == 0.0
        return
    assert {b: comps[b] for b in scored} == dict.fromkeys(scored, 1.0)
    assert reward == 1.0


def test_history_task_passes_with_the_missing_update(env: Tau2Env) -> None:
    msgs = [
        call("update_task_status", task_id="task_2", status="completed"),
        {"role": "assistant", "content": "done"},
    ]
    reward, info = play(env, "update_task_with_history_and_env_assertions", msgs)
    assert reward == 1.0 and info["reward_info"]["components"]["ENV_ASSERTION"] == 1.0


def test_user_tools_task_env_and_db_conflict(env: Tau2Env) -> None:
    task = next(t for t in env.tasks if t.id == "update_task_with_user_tools")
    dismiss = {
        "tool_calls": [
            {"name": "dismiss_notification", "arguments": {"notification_id": "notif_1"}}
        ]
    }
    _, info = play(env, task.id, gold_assistant_messages(task), [dismiss])
    comps = info["reward_info"]["components"]
    assert comps["ENV_ASSERTION"] == 1.0 and comps["ACTION"] == 1.0
    assert comps["DB"] == 0.0  # the user DB now differs from the gold one (upstream's data)
    # The user's tool call and result are in the scored conversation, not shown to the agent.
    assert any(m["role"] == "user" and m.get("tool_calls") for m in env.messages)


def test_dropping_last_write_zeroes_db(env: Tau2Env) -> None:
    task = next(t for t in env.tasks if t.id == "update_task_with_initialization_actions")
    gold = gold_assistant_messages(task)
    reward, info = play(env, task.id, gold[1:])  # the only write dropped
    assert reward == 0.0 and info["reward_info"]["components"]["DB"] == 0.0


@pytest.mark.parametrize("task_id", ["create_task_1", "create_task_1_with_env_assertions"])
def test_changing_an_argument_zeroes_db(env: Tau2Env, task_id: str) -> None:
    msgs = [
        call("create_task", user_id="user_1", title="Unimportant Meeting"),
        {"role": "assistant", "content": "ok"},
    ]
    reward, info = play(env, task_id, msgs)
    assert reward == 0.0 and info["reward_info"]["components"]["DB"] == 0.0


def test_env_assertion_fails_on_wrong_status(env: Tau2Env) -> None:
    msgs = [
        call("update_task_status", task_id="task_2", status="pending"),
        {"role": "assistant", "content": "ok"},
    ]
    reward, info = play(env, "update_task_with_history_and_env_assertions", msgs)
    assert reward == 0.0 and info["reward_info"]["env_assertions"][0]["met"] is False


def test_communicate_ignores_commas_and_case(env: Tau2Env) -> None:
    task = next(t for t in env.tasks if t.id == "update_task_with_initialization_data")
    gold = gold_assistant_messages(task)
    said = (
        "THE AGENT, ACKNOWLEDGED THE PREVIOUS CONTEXT; "
        "the agent confirmed the task status was updated successfully"
    )
    reward, _ = play(env, task.id, [gold[0], {"role": "assistant", "content": said}])
    assert reward == 1.0
    reward, info = play(env, task.id, [gold[0], {"role": "assistant", "content": "done"}])
    assert reward == 0.0 and info["reward_info"]["components"]["COMMUNICATE"] == 0.0


def test_action_compare_args_empty_matches_by_name() -> None:
    action = Action(
        action_id="a", name="transfer_to_human_agents", arguments={"summary": "x"}, compare_args=[]
    )
    assert action.matches("transfer_to_human_agents", {"summary": "anything"})
    assert not action.matches("get_users", {})
    strict = Action(action_id="b", name="f", arguments={"x": 1, "y": 2})
    assert strict.matches("f", {"x": 1}) and not strict.matches("f", {"x": 1, "y": 3})


# ---- episode mechanics ----------------------------------------------------------------


def test_reset_shows_policy_history_and_opening(env: Tau2Env) -> None:
    obs, info = env.reset(options={"task_id": "update_task_with_message_history"})
    assert obs[0]["role"] == "system" and "Mock Domain Policy" in obs[0]["content"]
    assert obs[2]["tool_calls"][0]["function"]["name"] == "create_task"
    assert obs[-1]["role"] == "user" and info["tau2_task_id"] == "update_task_with_message_history"
    assert {t["function"]["name"] for t in env.tools} == {
        "create_task",
        "get_users",
        "update_task_status",
        "transfer_to_human_agents",
    }


@pytest.mark.parametrize(
    "task_id",
    [
        "update_task_with_initialization_data",
        "update_task_with_initialization_actions",
        "update_task_with_message_history",
    ],
)
def test_initial_state_is_applied(env: Tau2Env, task_id: str) -> None:
    env.reset(options={"task_id": task_id})
    obs, *_ = env.step(call("update_task_status", task_id="task_2", status="completed"))
    assert '"task_id": "task_2"' in obs[0]["content"]  # task_2 exists only through the setup


def test_user_lines_then_stop(env: Tau2Env) -> None:
    env.reset(options={"task_id": "update_task_1", "user_lines": ["line one", "line two"]})
    assert env.step("hi")[0] == [{"role": "user", "content": "line one"}]
    assert env.step("hi")[0][0]["content"] == "line two"
    obs, _, done, _, info = env.step("hi")
    assert obs[0]["content"] == "###STOP###" and done and info["ending"] == "user_stop"


def test_too_many_errors_scores_zero(data_dir: Path) -> None:
    env = Tau2Env(data_dir=data_dir, max_errors=2)
    env.reset(options={"task_id": "create_task_1_nl_eval"})
    assert not env.step(call("nope"))[2]
    _, reward, done, _, info = env.step(call("nope"))
    assert done and reward == 0.0 and info["ending"] == "too_many_errors"


def test_max_steps_truncates_with_zero(data_dir: Path) -> None:
    env = Tau2Env(data_dir=data_dir, max_steps=1)
    env.reset(options={"task_id": "create_task_1_nl_eval"})
    _, reward, done, cut, info = env.step(call("get_users"))
    assert cut and not done and reward == 0.0 and info["ending"] == "max_steps"


def test_bad_tool_calls_become_counted_error_messages(env: Tau2Env) -> None:
    env.reset(options={"task_id": "update_task_1"})
    bad = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "a", "function": {"name": "create_task", "arguments": "{not json"}},
            {"id": "b", "function": {"name": "create_task", "arguments": '{"user_id": "user_1"}'}},
        ],
    }
    obs, _, done, _, info = env.step(bad)
    assert [m["tool_call_id"] for m in obs] == ["a", "b"] and not done
    assert all(m["content"].startswith("Error: ") for m in obs) and info["tool_errors"] == 2


def test_task_id_errors_and_split_errors(env: Tau2Env, data_dir: Path) -> None:
    with pytest.raises(ValueError, match="not a task"):
        env.reset(options={"task_id": "nope"})
    with pytest.raises(ValueError, match="unknown tau2 split 'train'; valid: \\['base'\\]"):
        Tau2Env(data_dir=data_dir, split="train")
    with pytest.raises(ValueError, match="unknown tau2 domain 'bank'"):
        Tau2Env(domain="bank", data_dir=data_dir)


def test_tool_calling_agent_with_scripted_engine(data_dir: Path) -> None:
    from areal_env.agents.tool_calling import ToolCallingAgent
    from areal_env.inference.chat_client import ChatClient
    from areal_env.testing import ScriptedEngine, char_tokenizer

    tok = char_tokenizer()
    replies = [
        '<tool_call>{"name": "update_task_status", "arguments": '
        '{"task_id": "task_1", "status": "completed"}}</tool_call>',
        "Task task_1 is completed.",
    ]
    client = ChatClient(ScriptedEngine(replies=[tok.encode(r) for r in replies]), tok)
    env = Tau2Env(data_dir=data_dir)
    traj = asyncio.run(
        ToolCallingAgent(max_turns=4).run(
            env, client.episode(), options={"task_id": "update_task_1"}
        )
    )
    assert traj.reward == 1.0 and traj.num_turns == 2 and traj.metrics["tool_calls"] == 1.0


# ---- toolkit and data location (no data needed) ---------------------------------------


class _Box(DB):
    n: int = 0


class _BoxTools(Toolkit[_Box]):
    @is_tool(ToolType.WRITE)
    def add(self, k: int, note: str = "") -> int:
        """Add to the box.

        Args:
            k: how much to add,
                over two lines.
            note: a note.
        """
        if k < 0:
            raise ValueError("k must be >= 0")
        self.db.n += k
        return self.db.n


def test_toolkit_error_texts() -> None:
    tools = _BoxTools(_Box())
    assert tools.call("nope", {}).content == "Error: Tool 'nope' not found."
    assert (
        tools.call("add", {}).content
        == "Error: _BoxTools.add() missing 1 required positional argument: 'k'"
    )
    assert (
        tools.call("add", {"k": 1, "x": 2}).content
        == "Error: _BoxTools.add() got an unexpected keyword argument 'x'"
    )
    wrong = tools.call("add", {"k": "many"})
    assert wrong.error and wrong.content.startswith("Error: Invalid arguments for tool 'add': k: ")
    assert tools.call("add", {"k": -1}).content == "Error: k must be >= 0"
    assert tools.db.n == 0  # no failed call changed the DB
    assert tools.call("add", {"k": "2"}).content == '"2"'  # lax int, tau2's str-then-JSON scalar


def test_schema_from_signature_and_docstring() -> None:
    (schema,) = _BoxTools.schemas()
    params = schema["function"]["parameters"]
    assert schema["function"]["description"] == "Add to the box."
    assert params["required"] == ["k"] and params["properties"]["k"]["type"] == "integer"
    assert params["properties"]["k"]["description"] == "how much to add, over two lines."
    assert _BoxTools.specs()["add"].mutates_state
    assert parse_docstring("Sum.\n\nArgs:\n    a: x\n")[1] == {"a": "x"}


def test_db_hash_is_taus() -> None:
    import hashlib

    expected = hashlib.sha256(json.dumps({"n": 3}, sort_keys=True).encode()).hexdigest()
    assert _Box(n=3).hash() == expected


def test_data_dir_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TAU2_DATA_DIR", raising=False)
    with pytest.raises(
        FileNotFoundError, match="pass data_dir= or set the environment variable TAU2_DATA_DIR"
    ):
        Tau2Env()
    with pytest.raises(FileNotFoundError, match="tau2/domains/mock not found"):
        Tau2Env(data_dir=tmp_path)
    monkeypatch.setenv("TAU2_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=r"from \$TAU2_DATA_DIR\) is not a folder"):
        resolve_data_dir()


def test_mock_schemas_validate_every_gold_action(shared_data: Path) -> None:
    data = DomainData.load(get_domain("mock"), shared_data)
    for task in data.tasks:
        for action in (
            task.evaluation_criteria.actions if task.evaluation_criteria else None
        ) or []:
            spec = (
                data.domain.tools if action.requestor == "assistant" else data.domain.user_tools
            ).specs()[action.name]
            spec.params.model_validate(action.arguments)
