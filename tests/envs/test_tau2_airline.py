"""tau2 airline domain: DB, tools and their error texts, every task's gold replay.

The 7 MB DB is loaded once per module (one ResourceRegistry shared by every env
here); the DB is copy-on-write, so the whole module runs in a few seconds.

Mutations tried by hand (each made a test here fail, then was reverted):
- book_reservation: take no seat -> test_booking_takes_seats_and_ids
- cancel_reservation: no refund entries -> test_cancel_refunds_every_payment
- FlightDB.__deepcopy__: keep the source's owned set
  -> test_pristine_db_untouched_by_episodes
- FlightDB._text: cache owned entities too -> test_fast_hash_is_taus_hash
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from areal_env.envs.tau2.data import Task
from areal_env.envs.tau2.domain import DomainData
from areal_env.envs.tau2.domains.airline.airline_models import FlightDB
from areal_env.envs.tau2.domains.airline.airline_tools import AirlineTools
from areal_env.envs.tau2.env import Tau2Env, gold_assistant_messages
from areal_env.envs.tau2.toolkit import DB, ToolType
from areal_env.resources import ResourceRegistry

RESOURCES = ResourceRegistry("test_tau2_airline")
"""One registry for the module: the airline data is loaded once."""

WRITE_TOOLS = {
    "book_reservation",
    "cancel_reservation",
    "send_certificate",
    "update_reservation_baggages",
    "update_reservation_flights",
    "update_reservation_passengers",
}


@pytest.fixture(scope="module")
def env(shared_data: Path) -> Tau2Env:
    return Tau2Env(domain="airline", data_dir=shared_data, resources=RESOURCES)


@pytest.fixture
def tools(env: Tau2Env) -> AirlineTools:
    """A fresh toolkit over a copy of the pristine DB."""
    state = env.data.new_state()
    assert isinstance(state.tools, AirlineTools)
    return state.tools


def airline_task_ids() -> list[str]:
    from tests.conftest import SHARED_DATA

    path = SHARED_DATA / "tau2" / "domains" / "airline" / "tasks.json"
    if not path.exists():
        return ["<no data>"]
    return [t["id"] for t in json.loads(path.read_text())]


def task_of(env: Tau2Env, task_id: str) -> Task:
    return next(t for t in env.tasks if t.id == task_id)


def play(env: Tau2Env, task_id: str, messages: list[dict[str, Any]]) -> tuple[float, dict]:
    env.reset(options={"task_id": task_id, "user_lines": []})
    reward, info, done = 0.0, {}, False
    for m in messages:
        assert not done, "the episode ended before the messages were played"
        _, reward, done, cut, info = env.step(m)
    assert done and not cut
    return reward, info


def db_of(tools: AirlineTools) -> FlightDB:
    assert isinstance(tools.db, FlightDB)
    return tools.db


# ---- the DB ----------------------------------------------------------------------------


def test_db_loads(env: Tau2Env) -> None:
    db = env.data.db
    assert isinstance(db, FlightDB)
    assert (len(db.flights), len(db.users), len(db.reservations)) == (300, 500, 2000)
    assert len(env.tasks) == 50 and len(env.data.splits["test"]) == 20
    assert "Airline Agent Policy" in env.data.policy


def test_fast_hash_is_taus_hash(tools: AirlineTools) -> None:
    db = db_of(tools)
    assert db.hash() == DB.hash(db)
    for _ in range(2):  # the second round changes entities already owned and hashed
        tools.call("send_certificate", {"user_id": "mia_li_3668", "amount": 50})
        tools.call("update_reservation_baggages", _bags("NO6JO3", 3 + _))
        assert db.hash() == DB.hash(db)


def test_pristine_db_untouched_by_episodes(env: Tau2Env, tools: AirlineTools) -> None:
    pristine = env.data.db
    before = DB.hash(pristine)
    tools.call("cancel_reservation", {"reservation_id": "NO6JO3"})
    again = db_of(tools).model_copy(deep=True)  # a copy of a changed copy
    tools.call("update_reservation_baggages", _bags("NO6JO3", 7))
    assert again.reservations["NO6JO3"].total_baggages != 7  # the copy did not see it
    AirlineTools(again).call("update_reservation_baggages", _bags("NO6JO3", 9))
    assert db_of(tools).reservations["NO6JO3"].total_baggages == 7
    assert again.reservations["NO6JO3"].status == "cancelled"
    assert pristine.reservations["NO6JO3"].status is None
    assert DB.hash(pristine) == before == pristine.hash()


def _bags(reservation_id: str, total: int) -> dict[str, Any]:
    return {
        "reservation_id": reservation_id,
        "total_baggages": total,
        "nonfree_baggages": 0,
        "payment_id": "credit_card_4421486",
    }


# ---- tools ------------------------------------------------------------------------------


def test_tools_and_kinds() -> None:
    specs = AirlineTools.specs()
    assert len(specs) == 14
    assert {n for n, s in specs.items() if s.mutates_state} == WRITE_TOOLS
    assert {n for n, s in specs.items() if s.kind == ToolType.GENERIC} == {
        "calculate",
        "transfer_to_human_agents",
    }
    for schema in AirlineTools.schemas():
        jsonschema.Draft202012Validator.check_schema(schema["function"]["parameters"])
        assert schema["function"]["description"]


def test_every_gold_action_fits_the_schemas(env: Tau2Env) -> None:
    for task in env.tasks:
        for action in (
            task.evaluation_criteria.actions if task.evaluation_criteria else None
        ) or []:
            schema = AirlineTools.specs()[action.name].schema["function"]["parameters"]
            jsonschema.validate(action.arguments, schema)


ERRORS = [
    ("get_reservation_details", {"reservation_id": "NOPE00"}, "Reservation NOPE00 not found"),
    ("get_user_details", {"user_id": "nobody_1"}, "User nobody_1 not found"),
    (
        "get_flight_status",
        {"flight_number": "HAT999", "date": "2024-05-20"},
        "Flight HAT999 not found",
    ),
    (
        "get_flight_status",
        {"flight_number": "HAT001", "date": "2025-01-01"},
        "Flight HAT001 not found on date 2025-01-01",
    ),
    ("calculate", {"expression": "2 + x"}, "Invalid characters in expression"),
    ("calculate", {"expression": "1 / 0"}, "division by zero"),
    ("send_certificate", {"user_id": "nobody_1", "amount": 5}, "User nobody_1 not found"),
    (
        "update_reservation_passengers",
        {
            "reservation_id": "R9QDGB",
            "passengers": [{"first_name": "A", "last_name": "B", "dob": "2000-01-01"}],
        },
        "Number of passengers does not match",
    ),
    (
        "update_reservation_baggages",
        {**_bags("R9QDGB", 3), "payment_id": "x"},
        "Payment method not found",
    ),
    (
        "update_reservation_baggages",
        {**_bags("R9QDGB", 3), "nonfree_baggages": 1, "payment_id": "certificate_7502997"},
        "Certificate cannot be used to update reservation",
    ),
    (
        "update_reservation_baggages",
        {**_bags("R9QDGB", 3), "nonfree_baggages": 2, "payment_id": "gift_card_5309492"},
        "Gift card balance is not enough",
    ),
    (
        "update_reservation_flights",
        {
            "reservation_id": "R9QDGB",
            "cabin": "economy",
            "flights": [{"flight_number": "HAT001", "date": "2024-05-01"}],
            "payment_id": "credit_card_6082923",
        },
        "Flight HAT001 not available on date 2024-05-01",
    ),
]


@pytest.mark.parametrize(("name", "arguments", "message"), ERRORS)
def test_tool_error_texts(tools: AirlineTools, name: str, arguments: dict, message: str) -> None:
    before = tools.db.hash()
    result = tools.call(name, arguments)
    assert result.error and result.content == f"Error: {message}"
    assert tools.db.hash() == before  # a failed call changes nothing


def booking(payments: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
    """One economy seat on HAT001 2024-05-20 (137) for mei_hernandez_8984."""
    args = {
        "user_id": "mei_hernandez_8984",
        "origin": "PHL",
        "destination": "LGA",
        "flight_type": "one_way",
        "cabin": "economy",
        "flights": [{"flight_number": "HAT001", "date": "2024-05-20"}],
        "passengers": [{"first_name": "Mei", "last_name": "Hernandez", "dob": "1981-01-11"}],
        "payment_methods": payments,
        "total_baggages": 0,
        "nonfree_baggages": 0,
        "insurance": "no",
    }
    return {**args, **changes}


@pytest.mark.parametrize(
    ("payments", "message"),
    [
        (
            [{"payment_id": "credit_card_6082923", "amount": 100}],
            "Payment amount does not add up, total price is 137, but paid 100",
        ),
        (
            [{"payment_id": "gift_card_5309492", "amount": 137}],
            "Not enough balance in payment method gift_card_5309492",
        ),
        ([{"payment_id": "paypal_1", "amount": 137}], "Payment method paypal_1 not found"),
    ],
)
def test_booking_errors(tools: AirlineTools, payments: list, message: str) -> None:
    before = tools.db.hash()
    assert tools.call("book_reservation", booking(payments)).content == f"Error: {message}"
    assert tools.db.hash() == before


def test_booking_takes_seats_and_ids(tools: AirlineTools) -> None:
    db = db_of(tools)
    pay = [
        {"payment_id": "certificate_7502997", "amount": 100},
        {"payment_id": "gift_card_5309492", "amount": 37},
    ]
    first = json.loads(tools.call("book_reservation", booking(pay)).content)
    assert first["reservation_id"] == "HATHAT" and first["created_at"] == "2024-05-15T15:00:00"
    assert first["flights"][0]["price"] == 137 and first["status"] is None
    user = db.users["mei_hernandez_8984"]
    assert "certificate_7502997" not in user.payment_methods  # a used certificate is gone
    assert user.payment_methods["gift_card_5309492"].amount == 61.0  # type: ignore[union-attr]
    day = db.flights["HAT001"].dates["2024-05-20"]
    assert day.available_seats["economy"] == 16  # type: ignore[union-attr]
    card = [{"payment_id": "credit_card_6082923", "amount": 137 + 30}]
    second = json.loads(tools.call("book_reservation", booking(card, insurance="yes")).content)
    assert second["reservation_id"] == "HATHAU" and user.reservations[-2:] == ["HATHAT", "HATHAU"]


def test_certificates_take_fixed_ids(tools: AirlineTools) -> None:
    texts = [
        tools.call("send_certificate", {"user_id": "mia_li_3668", "amount": 5}).content
        for _ in range(4)
    ]
    assert texts[0] == "Certificate certificate_3221322 added to user mia_li_3668 with amount 5."
    assert texts[2].startswith("Certificate certificate_3221324")
    assert texts[3] == "Error: Too many certificates"


def test_cancel_refunds_every_payment(tools: AirlineTools) -> None:
    out = json.loads(tools.call("cancel_reservation", {"reservation_id": "R9QDGB"}).content)
    assert out["status"] == "cancelled"
    assert out["payment_history"] == [
        {"payment_id": "credit_card_6082923", "amount": 1911},
        {"payment_id": "credit_card_6082923", "amount": -1911},
    ]


def test_reads_and_calculate(tools: AirlineTools) -> None:
    assert tools.call("calculate", {"expression": "2 * (3 + 4) / 3"}).content == "4.67"
    assert (
        tools.call("get_flight_status", {"flight_number": "HAT001", "date": "2024-05-03"}).content
        == "cancelled"
    )
    airports = json.loads(tools.call("list_all_airports", {}).content)
    assert len(airports) == 20 and airports[0] == {"iata": "SFO", "city": "San Francisco"}
    direct = json.loads(
        tools.call(
            "search_direct_flight", {"origin": "PHL", "destination": "LGA", "date": "2024-05-20"}
        ).content
    )
    assert {f["flight_number"] for f in direct} >= {"HAT001"} and direct[0]["date"] is None
    pairs = json.loads(
        tools.call(
            "search_onestop_flight", {"origin": "LAX", "destination": "BOS", "date": "2024-05-28"}
        ).content
    )
    assert pairs and all(
        a["destination"] == b["origin"] and a["date"] == "2024-05-28" for a, b in pairs
    )


# ---- gold replays ------------------------------------------------------------------------


@pytest.mark.parametrize("task_id", airline_task_ids())
def test_gold_replay_scores_one(env: Tau2Env, task_id: str) -> None:
    reward, info = play(env, task_id, gold_assistant_messages(task_of(env, task_id)))
    comps = info["reward_info"]["components"]
    assert info["reward_info"]["reward_basis"] == ["DB", "COMMUNICATE"]
    assert (comps["DB"], comps["COMMUNICATE"], reward) == (1.0, 1.0, 1.0)
    assert info["tool_errors"] == 0


def _writes(task: Task) -> list[int]:
    actions = (task.evaluation_criteria.actions if task.evaluation_criteria else None) or []
    return [i for i, a in enumerate(actions) if a.name in WRITE_TOOLS]


def _changed(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """The same call with one argument changed so that it reaches another state."""
    args = json.loads(json.dumps(args))
    if name in ("book_reservation", "update_reservation_baggages"):
        args["total_baggages"] += 1
    elif name == "cancel_reservation":
        args["reservation_id"] = "R9QDGB" if args["reservation_id"] != "R9QDGB" else "NO6JO3"
    elif name == "send_certificate":
        args["amount"] += 1
    elif name == "update_reservation_passengers":
        args["passengers"][0]["first_name"] += "x"
    elif name == "update_reservation_flights":
        args["cabin"] = "business" if args["cabin"] != "business" else "economy"
    return args


def _gold_with(task: Task, index: int, replace: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Gold messages with action ``index`` dropped (``replace`` None) or its arguments replaced."""
    messages = gold_assistant_messages(task)
    calls = [m for m in messages if m.get("tool_calls")]
    target = calls[index]
    if replace is None:
        return [m for m in messages if m is not target]
    target["tool_calls"][0]["function"]["arguments"] = json.dumps(replace)
    return messages


@pytest.mark.parametrize("task_id", airline_task_ids())
def test_dropping_last_write_zeroes_db(env: Tau2Env, task_id: str) -> None:
    task = task_of(env, task_id)
    writes = _writes(task)
    if not writes:
        pytest.skip("no state-changing gold action")
    reward, info = play(env, task_id, _gold_with(task, writes[-1], None))
    assert reward == 0.0 and info["reward_info"]["components"]["DB"] == 0.0


@pytest.mark.parametrize("task_id", airline_task_ids())
def test_changing_an_argument_zeroes_db(env: Tau2Env, task_id: str) -> None:
    task = task_of(env, task_id)
    writes = _writes(task)
    if not writes:
        pytest.skip("no state-changing gold action")
    assert task.evaluation_criteria is not None and task.evaluation_criteria.actions
    action = task.evaluation_criteria.actions[writes[-1]]
    reward, info = play(
        env, task_id, _gold_with(task, writes[-1], _changed(action.name, action.arguments))
    )
    assert reward == 0.0 and info["reward_info"]["components"]["DB"] == 0.0


def test_domain_data_is_shared(env: Tau2Env, shared_data: Path) -> None:
    other = Tau2Env(domain="airline", data_dir=shared_data, resources=RESOURCES)
    assert isinstance(other.data, DomainData) and other.data is env.data
