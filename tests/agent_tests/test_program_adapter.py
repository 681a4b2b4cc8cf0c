"""The "any program" adapter: a subprocess per episode, pointed at the episode's session.

Mutations tried (each made a test here fail, then was reverted):
- ``session_env`` not passed to the program: it cannot reach its session ->
  test_a_program_that_answers_is_scored_by_the_env
- the group kill replaced by ``proc.kill()``: the hanging program's child survives
  and holds stdout open, the adapter hangs -> test_a_program_that_hangs... (bounded wait)
- the stderr tail left out of the error -> test_a_program_that_crashes...
- ``require_model_calls`` skipped: the silent program scores 0 instead of failing ->
  test_a_program_that_never_calls_the_model...
- the posted reward ignored (the env scores the wrong answer 0) ->
  test_a_program_that_posts_its_own_reward...
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import pytest

import areal_env  # noqa: F401
from areal_env.agents.program_adapter import AgentProgramError, ProgramAdapter
from areal_env.agents.registry import make_agent
from areal_env.errors import EpisodeError
from areal_env.inference.chat_client import ChatClient
from areal_env.resources import ResourceRegistry
from areal_env.testing import ScriptedEngine, char_tokenizer

TOK = char_tokenizer()
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "openai_client_agent.py"


@pytest.fixture
async def resources():
    registry = ResourceRegistry(name="test")
    yield registry
    await registry.aclose()


def math_env(resources: ResourceRegistry):
    return gym.make("areal/Math-v0", resources=resources).unwrapped


def scripted(*replies: str) -> tuple[ChatClient, ScriptedEngine]:
    engine = ScriptedEngine(replies=[TOK.encode(r) for r in replies], logprob=-0.5)
    return ChatClient(engine, TOK), engine


def python(code: str, **kwargs: object) -> ProgramAdapter:
    return ProgramAdapter(command=[sys.executable, "-c", textwrap.dedent(code)], **kwargs)


async def answer_of(resources: ResourceRegistry, seed: int) -> str:
    _, info = await math_env(resources).areset(seed=seed)
    return str(info["answer"])


async def test_a_program_that_answers_is_scored_by_the_env(resources):
    answer = await answer_of(resources, 0)
    client, engine = scripted(answer)
    adapter = make_agent("program", command=[sys.executable, str(EXAMPLE)], timeout_s=30)
    traj = await adapter.run(math_env(resources), client.episode(), seed=0)
    assert traj.reward == 1.0
    assert traj.info["answer_text"] == answer
    [sample] = traj.samples
    generated = [t for t, m in zip(sample.input_ids, sample.loss_mask, strict=True) if m]
    assert generated == TOK.encode(answer) + [TOK.eos_token_id]
    assert len(engine.requests) == 1
    task = (await math_env(resources).areset(seed=0))[0][-1]["content"]
    assert task in TOK.decode(engine.requests[0].input_ids)  # the task went in on stdin


async def test_task_as_json_argument(resources):
    program = """
        import json, sys
        from openai import OpenAI
        messages = json.loads(sys.argv[1])
        reply = OpenAI().chat.completions.create(model="m", messages=messages)
        print("thinking...")
        print(reply.choices[0].message.content)
    """
    answer = await answer_of(resources, 1)
    client, _ = scripted(answer)
    adapter = python(program, task_format="json", task_as_argument=True)
    traj = await adapter.run(math_env(resources), client.episode(), seed=1)
    assert traj.reward == 1.0 and traj.info["answer_text"] == answer  # the last line


async def test_a_program_that_crashes_fails_the_episode_with_its_stderr(resources):
    client, _ = scripted("1")
    adapter = python("import sys; sys.stderr.write('boom: bad config\\n'); sys.exit(3)")
    with pytest.raises(AgentProgramError, match="code 3") as caught:
        await adapter.run(math_env(resources), client.episode(), seed=0)
    assert "boom: bad config" in str(caught.value)
    assert isinstance(caught.value, EpisodeError)  # the rollout counts it, the run goes on


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie waiting for init is no longer running


async def test_a_program_that_hangs_is_killed_with_its_children(resources, tmp_path):
    pids = tmp_path / "pids"
    program = f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{child.pid}}")
        time.sleep(60)
    """
    client, _ = scripted("1")
    adapter = python(program, timeout_s=1.5)
    with pytest.raises(AgentProgramError, match="ran past 1.5s"):
        # Bounded: were only the program killed, its child would hold stdout open forever.
        await asyncio.wait_for(adapter.run(math_env(resources), client.episode(), seed=0), 30)
    parent, child = map(int, pids.read_text().split())
    assert not running(parent)
    for _ in range(100):  # the child's SIGKILL is delivered asynchronously
        if not running(child):
            break
        await asyncio.sleep(0.02)
    assert not running(child), "the hanging program's child outlived the episode"


async def test_a_program_that_never_calls_the_model_fails_the_episode(resources):
    client, engine = scripted("1")
    adapter = python("print(42)")
    with pytest.raises(AgentProgramError, match="never called the model"):
        await adapter.run(math_env(resources), client.episode(), seed=0)
    assert engine.requests == []


async def test_a_program_that_posts_its_own_reward(resources):
    program = """
        import json, os, sys, urllib.request
        from openai import OpenAI
        task = sys.stdin.read()
        OpenAI().chat.completions.create(model="m", messages=[{"role": "user", "content": task}])
        request = urllib.request.Request(
            os.environ["OPENAI_BASE_URL"] + "/reward",
            data=json.dumps({"reward": 0.5, "info": {"judge": "self"}}).encode(),
            headers={"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"],
                     "Content-Type": "application/json"},
        )
        urllib.request.urlopen(request).read()
        print("not the answer")
    """
    client, _ = scripted("not the answer")
    traj = await python(program).run(math_env(resources), client.episode(), seed=0)
    assert traj.reward == 0.5  # the env would have scored this answer 0
    assert traj.info["judge"] == "self"


def test_bad_options_name_the_key():
    with pytest.raises(ValueError, match="agent.kwargs.command"):
        ProgramAdapter(command=[])
    with pytest.raises(ValueError, match="agent.kwargs.task_format"):
        ProgramAdapter(command="x", task_format="yaml")
    assert ProgramAdapter(command="python -c 'print(1)'").command == ["python", "-c", "print(1)"]
