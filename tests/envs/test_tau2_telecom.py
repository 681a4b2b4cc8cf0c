"""tau2 telecom domain: DBs, tools and error texts, the sync, every task's gold replay.

Every one of the 114 tasks is played through the env in the gold actions' order
(agent calls as assistant messages; user calls as the scripted user's device calls,
after the agent asks), and scores 1.0 on ENV_ASSERTION (and ACTION where the basis
names it). Dropping the last state-changing gold action makes ENV_ASSERTION 0 on
every task whose assertions are not already met by the initial state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from areal_env.envs.tau2.data import EnvFunctionCall, Task
from areal_env.envs.tau2.domain import ToolCall
from areal_env.envs.tau2.domains.telecom.telecom_domain import TelecomState
from areal_env.envs.tau2.domains.telecom.telecom_models import TelecomDB, TelecomUserDB
from areal_env.envs.tau2.domains.telecom.telecom_tools import TelecomTools
from areal_env.envs.tau2.domains.telecom.telecom_user_tools import TelecomUserTools
from areal_env.envs.tau2.env import Tau2Env
from areal_env.resources import ResourceRegistry

RESOURCES = ResourceRegistry("test_tau2_telecom")


@pytest.fixture(scope="module")
def env(shared_data: Path) -> Tau2Env:
    return Tau2Env(domain="telecom", data_dir=shared_data, resources=RESOURCES)


def telecom_task_ids() -> list[str]:
    from tests.conftest import SHARED_DATA

    path = SHARED_DATA / "tau2" / "domains" / "telecom" / "tasks.json"
    if not path.exists():
        return ["<no data>"]
    return [t["id"] for t in json.loads(path.read_text())]


def task_of(env: Tau2Env, task_id: str) -> Task:
    return next(t for t in env.tasks if t.id == task_id)


def script(task: Task, actions: list[Any]) -> tuple[list[dict], list]:
    """Agent messages and user lines that make ``actions`` in their order.

    A run of user actions follows an agent text asking for it: the scripted user
    makes those device calls, then says "done".
    """
    messages: list[dict] = []
    lines: list = []
    group: list[dict] | None = None
    for i, a in enumerate(actions):
        if a.requestor == "user":
            if group is None:
                messages.append({"role": "assistant", "content": "Please do this on your phone."})
                group = []
            group.append({"name": a.name, "arguments": a.arguments})
            continue
        if group is not None:
            lines += [{"tool_calls": group}, "done"]
            group = None
        fn = {"name": a.name, "arguments": json.dumps(a.arguments)}
        call = {"id": f"g{i}", "type": "function", "function": fn}
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    if group is not None:
        lines += [{"tool_calls": group}, "done"]
    if not actions or actions[-1].name != "transfer_to_human_agents":
        messages.append({"role": "assistant", "content": "Is there anything else?"})
    return messages, lines


def play(env: Tau2Env, task_id: str, messages: list[dict], lines: list) -> dict:
    env.reset(options={"task_id": task_id, "user_lines": lines})
    info: dict = {}
    done = False
    for m in messages:
        assert not done, "the episode ended before the messages were played"
        _, _, done, cut, info = env.step(m)
    assert done and not cut
    return info


def gold_actions(task: Task) -> list[Any]:
    assert task.evaluation_criteria is not None
    return list(task.evaluation_criteria.actions or [])


# ---- data ------------------------------------------------------------------------------


def test_dbs_load(env: Tau2Env) -> None:
    db = env.data.db
    assert isinstance(db, TelecomDB)
    assert (len(db.customers), len(db.lines), len(db.plans), len(db.bills), len(db.devices)) == (
        4,
        9,
        5,
        6,
        9,
    )
    assert isinstance(env.data.user_db, TelecomUserDB)
    assert len(env.tasks) == 114 and len(env.data.splits["base"]) == 114
    assert env.data.policy.startswith("<main_policy>\n")
    assert "<tech_support_policy>" in env.data.policy
    assert len(TelecomTools.specs()) == 13 and len(TelecomUserTools.specs()) == 30


# ---- gold replays ----------------------------------------------------------------------


@pytest.mark.parametrize("task_id", telecom_task_ids())
def test_gold_replay_scores_one(env: Tau2Env, task_id: str) -> None:
    task = task_of(env, task_id)
    messages, lines = script(task, gold_actions(task))
    info = play(env, task_id, messages, lines)
    ri = info["reward_info"]
    basis = ri["reward_basis"]
    assert "ENV_ASSERTION" in basis
    assert all(a["met"] for a in ri["env_assertions"]), ri["env_assertions"]
    assert {b: ri["components"][b] for b in basis} == dict.fromkeys(basis, 1.0)
    assert info["tool_errors"] == 0


@pytest.mark.parametrize("task_id", telecom_task_ids())
def test_dropping_last_write_fails_env(env: Tau2Env, task_id: str) -> None:
    task = task_of(env, task_id)
    actions = gold_actions(task)
    writes = [i for i, a in enumerate(actions) if a.name != "transfer_to_human_agents"]
    if not writes:
        pytest.skip("no state-changing gold action")
    kept = actions[: writes[-1]] + actions[writes[-1] + 1 :]
    info = play(env, task_id, *script(task, kept))
    assert info["reward_info"]["components"]["ENV_ASSERTION"] == 0.0


# ---- tools, errors and the sync --------------------------------------------------------


@pytest.fixture
def state(env: Tau2Env) -> TelecomState:
    s = env.data.new_state()
    assert isinstance(s, TelecomState)
    return s


def agent(state: TelecomState, name: str, **args: Any) -> str:
    return state.respond(ToolCall(name, args)).content


def user(state: TelecomState, name: str, **args: Any) -> str:
    return state.respond(ToolCall(name, args, "user")).content


def test_agent_error_texts(state: TelecomState) -> None:
    assert agent(state, "get_customer_by_id", customer_id="C9") == (
        "Error: Customer with ID C9 not found"
    )
    assert agent(state, "get_customer_by_phone", phone_number="1") == (
        "Error: Customer with phone number 1 not found"
    )
    assert agent(state, "get_details_by_id", id="X1") == "Error: Unknown ID format or type: X1"
    assert agent(state, "suspend_line", customer_id="C1001", line_id="L1004", reason="x") == (
        "Error: Line L1004 not found for customer C1001"
    )
    assert agent(state, "refuel_data", customer_id="C1001", line_id="L1002", gb_amount=0) == (
        "Error: Refuel amount must be positive"
    )
    assert agent(state, "send_payment_request", customer_id="C1001", bill_id="B1004") == (
        "Error: Bill B1004 not found for customer C1001"
    )
    assert agent(state, "resume_line", customer_id="C1001", line_id="L1002") == (
        "Error: Line must be suspended to resume"
    )
    assert agent(state, "enable_roaming", customer_id="C1001", line_id="L1002") in (
        "Roaming enabled successfully",
        "Roaming was already enabled",
    )
    usage = json.loads(agent(state, "get_data_usage", customer_id="C1001", line_id="L1002"))
    assert usage["cycle_end_date"] == "2025-02-28"


def test_refuel_charges_the_draft_bill(state: TelecomState) -> None:
    out = json.loads(agent(state, "refuel_data", customer_id="C1001", line_id="L1002", gb_amount=2))
    assert out["message"].startswith("Successfully added 2.0 GB of data for line L1002 for $")
    draft = json.loads(agent(state, "get_details_by_id", id="B1003"))
    assert draft["line_items"][-1]["description"].startswith("Data refueling: 2.0 GB at $")


def test_payment_flows_through_the_sync(state: TelecomState) -> None:
    state.run_function(
        _call("user", "set_user_info", {"name": "John Smith", "phone_number": "555-123-2002"})
    )
    assert user(state, "check_payment_request") == "No payment request has been made."
    assert user(state, "make_payment") == "You do not have a payment request."
    assert agent(state, "send_payment_request", customer_id="C1001", bill_id="B1002") == (
        "Payment request sent to the customer for bill B1002"
    )
    assert user(state, "check_payment_request").startswith(
        "You have a payment request for bill B1002 of "
    )
    assert user(state, "make_payment").startswith("Payment of ")
    assert json.loads(agent(state, "get_details_by_id", id="B1002"))["status"] == "Paid"
    assert user(state, "check_payment_request") == "No payment request has been made."


def test_user_tool_texts(state: TelecomState) -> None:
    assert user(state, "set_network_mode_preference", mode="6g").startswith(
        "Failed to set network mode: '6g' is not a valid option. Please use one of: "
        "4g_5g_preferred, 4g_only, 3g_only, 2g_only\nStatus Bar: "
    )
    assert user(state, "check_status_bar") == (
        "Status Bar: 📶³ Good | 5G | 📱 Data Enabled | 🔋 80%"
    )
    assert user(state, "toggle_airplane_mode") == (
        "Airplane Mode is now ON.\nStatus Bar: ✈️ Airplane Mode | 🔋 80%"
    )
    assert user(state, "toggle_wifi").startswith(
        "Cannot change Wi-Fi settings while Airplane Mode is ON."
    )
    assert user(state, "grant_app_permission", app_name="camera", permission="sms").startswith(
        "Error. App 'camera' not found. Cannot grant permission."
    )
    assert user(state, "run_speed_test") == "Speed test failed: No Connection."
    assert user(state, "reboot_device").startswith("Restarting network services...")
    assert user(state, "no_such_tool") == "Error: Tool 'no_such_tool' not found."


def _call(side: str, func: str, args: dict[str, Any]) -> EnvFunctionCall:
    return EnvFunctionCall(env_type=side, func_name=func, arguments=args)
