"""tau2's LLM user simulator and the record/replay cache, over a scripted engine.

The user model is our own ChatClient.untracked() over a ScriptedEngine that says
given lines, so every prompt the user model got is in ``engine.requests`` and is
compared, token for token, with the rendering of the messages tau2 would send.

Mutations tried by hand (each made a test here fail, then was reverted):
- llm_user.flip_roles: keep the agent's tool-call messages and their results
  -> test_prompt_is_guidelines_scenario_and_flipped_roles
- llm_user.LLMUser.start: always use the plain guidelines (never the tools variant)
  -> test_prompt_is_guidelines_scenario_and_flipped_roles
- user_cache.CallCache.call: key on the last message only
  -> test_cache_is_generic_over_call_kinds (a changed earlier message still hit)
- user_cache.CallCache.call: call the model in replay mode on a miss
  -> test_replay_miss_names_the_key (no CacheMiss; the model-less user is reached)
- llm_user.LLMUser.request: no tau2 greeting before the user's opening
  -> test_prompt_is_guidelines_scenario_and_flipped_roles
- llm_user.LLMUser.reply: drop the reply's tool_calls
  -> test_user_tool_calls_run_on_the_user_side
"""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from areal_env.envs.tau2.data import domain_dir, load_tasks
from areal_env.envs.tau2.env import Tau2Env
from areal_env.envs.tau2.llm_user import FIRST_AGENT_MESSAGE, LLMUser, guidelines_path
from areal_env.envs.tau2.user_cache import CacheMiss, CallCache
from areal_env.inference.chat_client import ChatClient, SamplingConfig
from areal_env.testing import ScriptedEngine, char_tokenizer
from areal_env.types import GenerationRequest, GenerationResult

TOK = char_tokenizer()


@pytest.fixture(scope="module")
def data_dir(shared_data: Path) -> Path:
    return shared_data


class DownEngine:
    """An engine that is not there: any request raises (replay must never ask)."""

    version = 0
    requests: ClassVar[list[GenerationRequest]] = []

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        raise ConnectionError("the user LLM is down")


def user_client(lines: list[str]) -> tuple[ChatClient, ScriptedEngine]:
    engine = ScriptedEngine(replies=[TOK.encode(x, add_special_tokens=False) for x in lines])
    return ChatClient(engine, TOK, sampling=SamplingConfig(max_new_tokens=1024)), engine


def llm_env(data_dir: Path, client: Any, **kwargs: Any) -> Tau2Env:
    return Tau2Env(
        domain="mock", data_dir=data_dir, user={"kind": "llm", "client": client}, **kwargs
    )


def call(name: str, **arguments: Any) -> dict:
    function = {"name": name, "arguments": json.dumps(arguments)}
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "a1", "function": function}],
    }


def prompt_of(engine: ScriptedEngine, i: int) -> str:
    return TOK.decode(list(engine.requests[i].input_ids), skip_special_tokens=False)


UPDATE_AGENT = [call("update_task_status", task_id="task_1", status="completed"), "Done."]


def play(env: Tau2Env, task_id: str, agent: list) -> tuple[list, float, dict]:
    obs, _ = env.reset(options={"task_id": task_id})
    reward, info, done = 0.0, {}, False
    for m in agent:
        assert not done
        _, reward, done, _, info = env.step(m)
    assert done, "the user did not end the episode"
    return obs, reward, info


# ---- the loop -------------------------------------------------------------------------


def test_llm_user_episode_terminates_and_is_scored(data_dir: Path) -> None:
    client, engine = user_client(["Please mark task_1 as completed.", "Thanks! ###STOP###"])
    env = llm_env(data_dir, client.untracked())
    obs, reward, info = play(env, "update_task_1", UPDATE_AGENT)
    assert obs[-1] == {"role": "user", "content": "Please mark task_1 as completed."}
    assert info["ending"] == "user_stop" and reward == 1.0
    assert info["reward_info"]["components"]["DB"] == 1.0
    assert len(engine.requests) == 2  # the opening, then the answer to "Done."


def test_prompt_is_guidelines_scenario_and_flipped_roles(data_dir: Path) -> None:
    client, engine = user_client(["Please mark task_1 as completed.", "###STOP###"])
    env = llm_env(data_dir, client.untracked())
    play(env, "update_task_1", UPDATE_AGENT)
    task = next(t for t in env.tasks if t.id == "update_task_1")
    guidelines = guidelines_path(data_dir, tools=True).read_text()  # mock gives the user tools
    system = f"{guidelines}\n\n<scenario>\nInstructions:\n\t{task.user_scenario.instructions}"
    system += "\n</scenario>"
    expected = [
        {"role": "system", "content": system.strip()},
        {"role": "user", "content": FIRST_AGENT_MESSAGE},
        {"role": "assistant", "content": "Please mark task_1 as completed."},
        # the agent's update_task_status call and its result are not shown to the user
        {"role": "user", "content": "Done."},
    ]
    user_tools = env.data.domain.user_tools.schemas()
    text = client.render(expected, user_tools, generation_prompt=True)
    assert list(engine.requests[1].input_ids) == TOK.encode(text, add_special_tokens=False)
    first = client.render(expected[:2], user_tools, generation_prompt=True)
    assert list(engine.requests[0].input_ids) == TOK.encode(first, add_special_tokens=False)
    assert "You have some tools" in prompt_of(engine, 0)  # the tools variant


def test_structured_scenario_and_plain_guidelines(data_dir: Path) -> None:
    """No user tools: tau2's plain guidelines; the scenario as tau2's str(UserScenario)."""
    task = load_tasks(domain_dir(data_dir, "airline"))[0]
    user = LLMUser(data_dir=data_dir, client=object())
    asyncio.run(user.start(task, tools=[], options={}))
    request = user.request([{"role": "system", "content": "policy"}])
    system = request["messages"][0]["content"]
    i = task.user_scenario.instructions
    assert system.startswith(guidelines_path(data_dir, tools=False).read_text().strip())
    assert "tools" not in request
    assert f"<scenario>\nPersona:\n\t{task.user_scenario.persona}" in system or (
        task.user_scenario.persona is None and "<scenario>\nInstructions:\n\t" in system
    )
    assert f"\tDomain: airline\n\tReason for call:\n\t\t{i.reason_for_call.strip()[:40]}" in system
    assert system.endswith("\n</scenario>")


def test_user_tool_calls_run_on_the_user_side(data_dir: Path) -> None:
    tool_line = '<tool_call>{"name": "check_notifications", "arguments": {}}</tool_call>'
    client, engine = user_client([tool_line, "I saw a notification about task_1.", "###STOP###"])
    env = llm_env(data_dir, client.untracked())
    obs, _ = env.reset(options={"task_id": "update_task_with_user_tools"})
    assert obs[-1] == {"role": "user", "content": "I saw a notification about task_1."}
    roles = [m["role"] for m in env.messages]
    assert roles == ["system", "user", "tool", "user"]
    calls = env.messages[1]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["check_notifications"]
    result = env.messages[2]["content"]
    assert "notif_1" in result  # the user's toolkit answered
    # the second user call saw its tool call (as assistant) and the result (as tool)
    second = prompt_of(engine, 1)
    assert "check_notifications" in second.split("<|im_start|>assistant")[1]
    assert "<|im_start|>tool\n" in second and result[:30] in second
    env.step("Anything else?")


@pytest.mark.parametrize("token", ["###STOP###", "###TRANSFER###", "###OUT-OF-SCOPE###"])
def test_stop_tokens_end_the_episode(data_dir: Path, token: str) -> None:
    client, _ = user_client(["Please mark task_1 as completed.", f"Okay then. {token}"])
    env = llm_env(data_dir, client.untracked())
    env.reset(options={"task_id": "update_task_1"})
    _, reward, done, cut, info = env.step("I cannot do that.")
    assert done and not cut and info["ending"] == "user_stop"
    assert reward == 0.0 and info["reward_info"]["components"]["DB"] == 0.0


def test_text_without_token_goes_on(data_dir: Path) -> None:
    client, _ = user_client(["Please mark task_1 as completed.", "STOP please, # not a token"])
    env = llm_env(data_dir, client.untracked())
    env.reset(options={"task_id": "update_task_1"})
    assert env.step("Which task?")[2] is False


# ---- record and replay ----------------------------------------------------------------


def test_record_then_replay_reproduces_the_episode(data_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "user.jsonl"
    tool_line = '<tool_call>{"name": "check_notifications", "arguments": {}}</tool_call>'
    lines = [tool_line, "Please mark task_1 completed.", "Thanks. ###STOP###"]
    client, engine = user_client(lines)
    env = llm_env(data_dir, client.untracked(), user_cache=cache, user_cache_mode="record")
    obs, reward, info = play(env, "update_task_with_user_tools", UPDATE_AGENT)
    records = [json.loads(x) for x in cache.read_text().splitlines()]
    assert [(r["kind"], r["task_id"], r["turn"]) for r in records] == [
        ("user", "update_task_with_user_tools", t) for t in range(3)
    ]
    down = ChatClient(DownEngine(), TOK).untracked()  # type: ignore[arg-type]
    replay = llm_env(data_dir, down, user_cache=cache, user_cache_mode="replay")
    obs2, reward2, info2 = play(replay, "update_task_with_user_tools", UPDATE_AGENT)
    assert (obs2, reward2) == (obs, reward)
    assert replay.messages == env.messages  # the user's tool-call ids included
    assert info2["reward_info"] == info["reward_info"]
    # and without any model configured at all
    bare = Tau2Env(
        domain="mock", data_dir=data_dir, user="llm", user_cache=cache, user_cache_mode="replay"
    )
    assert play(bare, "update_task_with_user_tools", UPDATE_AGENT)[1] == reward
    assert bare.messages == env.messages


def test_replay_miss_names_the_key(data_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "user.jsonl"
    client, _ = user_client(["Please mark task_1 as completed.", "###STOP###"])
    play(llm_env(data_dir, client.untracked(), user_cache=cache), "update_task_1", UPDATE_AGENT)
    replay = Tau2Env(
        domain="mock", data_dir=data_dir, user="llm", user_cache=cache, user_cache_mode="replay"
    )
    replay.reset(options={"task_id": "update_task_1"})
    with pytest.raises(CacheMiss, match=r"'user' call for task 'update_task_1' turn 1 hash \w+"):
        replay.step("Something the recorded agent never said.")


def test_auto_mode_calls_once_then_replays(data_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "user.jsonl"
    client, engine = user_client(["Please mark task_1 as completed.", "###STOP###"])
    first = llm_env(data_dir, client.untracked(), user_cache=cache)
    play(first, "update_task_1", UPDATE_AGENT)
    assert len(engine.requests) == 2
    again = llm_env(data_dir, client.untracked(), user_cache=cache)  # a fresh cache object
    play(again, "update_task_1", UPDATE_AGENT)
    assert len(engine.requests) == 2 and again.messages == first.messages
    assert len(cache.read_text().splitlines()) == 2


def test_cache_is_generic_over_call_kinds(tmp_path: Path) -> None:
    """A judge can share the file: same task/turn/request, another kind, another answer."""
    cache = CallCache(tmp_path / "c.jsonl", "auto")

    async def answer(x: str) -> dict:
        return {"content": x}

    async def run() -> tuple[Any, Any]:
        a = await cache.call("user", "t", 0, {"q": 1}, lambda: answer("user"))
        b = await cache.call("nl_judge", "t", 0, {"q": 1}, lambda: answer("judge"))
        return a, b

    assert asyncio.run(run()) == ({"content": "user"}, {"content": "judge"})
    replay = CallCache(tmp_path / "c.jsonl", "replay")
    got = asyncio.run(replay.call("nl_judge", "t", 0, {"q": 1}, lambda: answer("new")))
    assert got == {"content": "judge"}
    # a changed earlier message (here the system prompt) is another key, not a stale hit
    other = {"messages": [{"role": "system", "content": "B"}, {"role": "user", "content": "u"}]}
    asyncio.run(cache.call("user", "t", 1, {**other, "x": 0}, lambda: answer("B")))
    recorded = {"messages": [{"role": "system", "content": "A"}, {"role": "user", "content": "u"}]}
    asyncio.run(cache.call("user", "t", 1, recorded, lambda: answer("A")))
    replay = CallCache(tmp_path / "c.jsonl", "replay")
    changed = {"messages": [{"role": "system", "content": "C"}, {"role": "user", "content": "u"}]}
    with pytest.raises(CacheMiss, match="recorded with other conversations"):
        asyncio.run(replay.call("user", "t", 1, changed, lambda: answer("new")))
    with pytest.raises(FileNotFoundError, match="record it first"):
        CallCache(tmp_path / "missing.jsonl", "replay")
    with pytest.raises(ValueError, match="user_cache_mode"):
        CallCache(tmp_path / "c.jsonl", "sometimes")


# ---- configuration and the endpoint path ----------------------------------------------


def test_config_errors(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="needs a model"):
        Tau2Env(domain="mock", data_dir=data_dir, user={"kind": "llm"})
    with pytest.raises(ValueError, match="unknown LLM user config keys \\['temprature'\\]"):
        Tau2Env(domain="mock", data_dir=data_dir, user={"kind": "llm", "temprature": 0})
    with pytest.raises(ValueError, match="unknown tau2 user 'human'"):
        Tau2Env(domain="mock", data_dir=data_dir, user="human")
    client, _ = user_client(["hi"])
    env = llm_env(data_dir, client.untracked())
    with pytest.raises(ValueError, match="user_lines"):
        env.reset(options={"task_id": "update_task_1", "user_lines": ["hi"]})


class _FakeOpenAI(BaseHTTPRequestHandler):
    """A one-route OpenAI-compatible server: answers each completion from ``replies``."""

    replies: ClassVar[list[str]] = []
    bodies: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append({**body, "auth": self.headers.get("Authorization")})
        text = type(self).replies[len(type(self).bodies) - 1]
        message = {"role": "assistant", "content": text}
        data = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        }
        raw = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


def test_openai_endpoint(data_dir: Path) -> None:
    """base_url/model/api_key reach a real HTTP endpoint through the official client."""
    _FakeOpenAI.replies, _FakeOpenAI.bodies = ["Mark task_1 completed.", "###STOP###"], []
    server = HTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}/v1"
        user: dict[str, Any] = {"kind": "llm", "base_url": base, "model": "user-7b"}
        user |= {"api_key": "sk-test", "llm_args": {"temperature": 0.0}}
        env = Tau2Env(domain="mock", data_dir=data_dir, user=user)
        obs, reward, _ = play(env, "update_task_1", UPDATE_AGENT)
        env.close()
    finally:
        server.shutdown()
    assert obs[-1]["content"] == "Mark task_1 completed." and reward == 1.0
    body = _FakeOpenAI.bodies[1]
    assert body["model"] == "user-7b" and body["temperature"] == 0.0
    assert body["auth"] == "Bearer sk-test"
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert body["messages"][-1]["content"] == "Done."
