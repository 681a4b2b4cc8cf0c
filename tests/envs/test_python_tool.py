"""areal/PythonTool-v0: the python tool through the agent loop, the real sandbox, tasks, demos.

The async tests share one event loop and so one warm sandbox pool (``registry``, a
module fixture closed at the end). Where no sandbox can start they are skipped, unless
``CI`` is set (then they fail), as the sandbox's own tests are.

Mutations tried (each made the named test fail, then was reverted):

- ``read_argument`` without the function-name check (any tool runs as python):
  ``test_malformed_calls_are_answered_and_counted``.
- ``_run_calls`` without the ``max_calls_per_turn`` cap: the same test.
- ``_run_calls`` replies reversed (not in call order):
  ``test_parallel_calls_in_one_message_answer_each_call_in_order``.
- ``cut = self.num_steps >= self.max_turns`` (off by one): ``test_turn_limit_truncates...``.
- ``LoopSandboxes`` making its Sandbox lazily on first use (none at construction):
  ``test_construction_fails_without_bubblewrap_unless_opted_in``.
- ``LoopSandboxes.current`` returning one Sandbox for every loop:
  ``test_two_sync_envs_each_get_a_pool_on_their_own_loop`` ("in use on another event loop").
- ``LoopSandboxes.aclose`` a no-op: ``test_envs_of_one_registry_share_a_pool_closed_with_it``.
- ``cut_output`` keeping only the head: ``test_failing_programs_are_error_messages...``
  (the sandbox's "[output truncated" note at the tail is lost).
- ``ToolReply(..., result.ok)`` replaced by ``True``: the same test (``tool_errors``).
- the file format always read as GSM8K: ``test_math500_format_file_is_detected_by_its_keys``.
- ``_gold_calls`` printing the answer instead of the calculation, and the demonstration's
  last message ``The answer: N`` instead of ``\\boxed{N}``:
  ``test_demonstrations_are_gold_traces_scoring_one``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import gymnasium as gym
import pytest
import pytest_asyncio

import areal_env  # noqa: F401  (registers the ids)
from areal_env.agents.tool_calling import ToolCallingAgent
from areal_env.envs.python_tool.data import gsm8k_calculations, load_math_jsonl
from areal_env.envs.python_tool.env import PythonToolEnv
from areal_env.envs.python_tool.tools import LoopSandboxes, cut_output
from areal_env.inference.chat_client import ChatClient
from areal_env.resources import ResourceRegistry
from areal_env.rollout.demonstrations import build_demonstrations
from areal_env.sandbox import SandboxConfig, SandboxUnavailableError
from areal_env.testing import ScriptedEngine, char_tokenizer

module_loop = pytest.mark.asyncio(loop_scope="module")

SANDBOX = {"timeout_s": 1.0, "pool_size": 1, "memory_mb": 128, "max_output_bytes": 4096}
"""Fast settings: a 1 s wall limit (measured from sending the code, after the start)."""

TINY_MATH500 = [
    {
        "problem": "What is $\\frac{1}{2} + \\frac{1}{3}$?",
        "solution": "We get $\\boxed{\\frac{5}{6}}$.",
        "answer": "\\frac{5}{6}",
        "subject": "Prealgebra",
        "level": 1,
        "unique_id": "test/prealgebra/1.json",
    },
    {
        "problem": "Convert $(0,3)$ to polar coordinates.",
        "solution": "So $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$.",
        "answer": "\\left( 3, \\frac{\\pi}{2} \\right)",
        "subject": "Precalculus",
        "level": 2,
        "unique_id": "test/precalculus/807.json",
    },
]
"""Records in MATH-500's format (the second is the real file's first), for a plain clone."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def registry(sandbox_available: None):
    reg = ResourceRegistry("python_tool_tests")
    yield reg
    await reg.aclose()


def make_env(registry: ResourceRegistry, **kwargs) -> PythonToolEnv:
    kwargs.setdefault("sandbox", SANDBOX)
    return PythonToolEnv(resources=registry, **kwargs)


def call(code: str | None = None, *, id: str = "c1", name: str = "python", raw=None) -> dict:
    args = raw if raw is not None else json.dumps({} if code is None else {"code": code})
    return {"id": id, "type": "function", "function": {"name": name, "arguments": args}}


def act(*calls: dict) -> dict:
    return {"role": "assistant", "content": None, "tool_calls": list(calls)}


def block(code: str, name: str = "python") -> str:
    arguments = json.dumps({"code": code})
    return f'<tool_call>{{"name": "{name}", "arguments": {arguments}}}</tool_call>'


async def play(env: PythonToolEnv, replies: list[str], *, task_index: int = 0, max_turns=8):
    tok = char_tokenizer()
    client = ChatClient(ScriptedEngine(replies=[tok.encode(r) for r in replies]), tok)
    agent = ToolCallingAgent(max_turns=max_turns)
    traj = await agent.run(env, client.episode(), options={"task_index": task_index})
    return traj, tok


def split_by_mask(traj, tok) -> tuple[str, str]:
    """(text of the prompt tokens, text of the sampled tokens) of the episode's one sample."""
    (sample,) = traj.samples
    prompt = [t for t, m in zip(sample.input_ids, sample.loss_mask, strict=True) if m == 0]
    sampled = [t for t, m in zip(sample.input_ids, sample.loss_mask, strict=True) if m == 1]
    return tok.decode(prompt), tok.decode(sampled)


# ---- the tool round trip through the agent ------------------------------------------------


@module_loop
async def test_python_call_round_trip_through_the_agent(registry):
    env = make_env(registry)
    _, info = await env.areset(options={"task_index": 0})
    expression = env.source[0].calculations[0]
    code = f"print('value is', {expression})"
    traj, tok = await play(env, [block(code), f"So \\boxed{{{info['answer']}}}"])

    assert traj.reward == 1.0 and not traj.truncated
    assert traj.num_turns == 2 and traj.metrics["tool_calls"] == 1.0
    assert traj.metrics["tool_errors"] == 0.0
    tool_messages = [m for m in traj.messages if m["role"] == "tool"]
    assert [m["content"] for m in tool_messages] == [f"value is {info['answer']}"]
    assert traj.info["correct"] is True and traj.info["tool_calls"] == 1
    prompt, sampled = split_by_mask(traj, tok)
    # The program's output is in the sequence as prompt tokens, never trained on.
    assert f"value is {info['answer']}" in prompt
    assert "value is" not in sampled.replace(code, "")
    assert json.dumps({"code": code}) in sampled  # the call itself is trained on


@module_loop
async def test_parallel_calls_in_one_message_answer_each_call_in_order(registry):
    env = make_env(registry)
    _, info = await env.areset(options={"task_index": 1})
    replies = [
        block("print('first')") + block("import sys; print('second', file=sys.stderr)"),
        f"\\boxed{{{info['answer']}}}",
    ]
    traj, _ = await play(env, replies, task_index=1)
    calls = traj.messages[2]["tool_calls"]  # system, user, assistant
    tool_messages = traj.messages[3:5]
    assert [m["role"] for m in tool_messages] == ["tool", "tool"]
    assert [m["content"] for m in tool_messages] == ["first", "second"]
    assert [m["tool_call_id"] for m in tool_messages] == [c["id"] for c in calls]
    assert traj.reward == 1.0 and traj.metrics["tool_calls"] == 2.0


@module_loop
async def test_failing_programs_are_error_messages_and_the_episode_goes_on(registry):
    env = make_env(registry, max_output_chars=300)
    _, info = await env.areset(options={"task_index": 2})
    programs = [
        "print('before'); 1/0",  # raises
        "while True: pass",  # runs past the 1 s wall limit
        "print('x' * 100_000)",  # floods past max_output_bytes
        "b = bytearray(400 * 2**20)",  # past memory_mb=128
    ]
    obs, reward, done, cut, step = await env.astep(
        act(*(call(p, id=f"c{i}") for i, p in enumerate(programs)))
    )
    assert (reward, done, cut) == (0.0, False, False)
    raised, looped, flooded, allocated = (m["content"] for m in obs)
    assert raised.startswith("before") and "ZeroDivisionError" in raised
    assert "[exit code 1]" in raised
    assert "timed out" in looped
    assert flooded.startswith("xxx") and len(flooded) < 500
    assert "[output truncated at 4096 bytes" in flooded and "[output cut" in flooded
    assert "MemoryError" in allocated or "[killed: memory limit]" in allocated
    assert step == {"tool_calls": 4, "tool_errors": 4, "malformed_calls": 0}
    # The sandbox still works, and the episode ends on the answer.
    obs, *_ = await env.astep(act(call("print(2 + 2)")))
    assert obs[0]["content"] == "4"
    _, reward, done, _, step = await env.astep(f"\\boxed{{{info['answer']}}}")
    assert (reward, done, step["tool_errors"], step["tool_calls"]) == (1.0, True, 4, 5)


@module_loop
async def test_malformed_calls_are_answered_and_counted(registry):
    env = make_env(registry, max_calls_per_turn=6)
    await env.areset(options={"task_index": 0})
    calls = [
        call("print(1)", name="bash"),
        call(raw="{not json"),
        call(raw='["print(1)"]'),
        call(None),
        call(raw='{"code": 42}'),
        call("   "),
        call("print(1)"),  # the 7th: over max_calls_per_turn
    ]
    for i, c in enumerate(calls):
        c["id"] = f"c{i}"
    obs, reward, done, cut, step = await env.astep(act(*calls))
    contents = [m["content"] for m in obs]
    assert contents == [
        "error: unknown tool 'bash'; the only tool is 'python'",
        "error: arguments are not valid JSON (Expecting property name enclosed in double quotes)",
        "error: arguments must be a JSON object",
        "error: 'code' must be a non-empty string",
        "error: 'code' must be a non-empty string",
        "error: 'code' must be a non-empty string",
        "error: too many tool calls in one message (at most 6); this one was not run",
    ]
    assert [m["tool_call_id"] for m in obs] == [f"c{i}" for i in range(7)]
    assert step == {"tool_calls": 7, "tool_errors": 7, "malformed_calls": 7}
    assert (reward, done, cut) == (0.0, False, False)


@module_loop
async def test_malformed_calls_are_counted_through_the_agent(registry):
    env = make_env(registry)
    _, info = await env.areset(options={"task_index": 0})
    bad = '<tool_call>{"name": "shell", "arguments": {"cmd": "ls"}}</tool_call>'
    missing = '<tool_call>{"name": "python", "arguments": {"source": "print(1)"}}</tool_call>'
    traj, _ = await play(env, [bad, missing, f"\\boxed{{{info['answer']}}}"])
    errors = [m["content"] for m in traj.messages if m["role"] == "tool"]
    assert errors == [
        "error: unknown tool 'shell'; the only tool is 'python'",
        "error: 'code' must be a non-empty string",
    ]
    assert traj.metrics["tool_errors"] == 2.0 and traj.info["malformed_calls"] == 2
    assert traj.reward == 1.0


@module_loop
async def test_turn_limit_truncates_with_the_last_tool_results(registry):
    env = make_env(registry, max_turns=2)
    await env.areset(options={"task_index": 0})
    assert (await env.astep(act(call("print(1)"))))[3] is False
    obs, reward, done, cut, _ = await env.astep(act(call("print(2)")))
    assert cut and not done and reward == 0.0 and obs[0]["content"] == "2"
    # Through the agent: the env's limit ends the episode before the agent's own.
    traj, _ = await play(env, [block("print(1)")] * 5, max_turns=8)
    assert traj.truncated and traj.reward == 0.0 and traj.num_turns == 2


# ---- tasks ------------------------------------------------------------------------------


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_gsm8k_format_file_gives_tasks_with_annotated_calculations(tiny_gsm8k):
    source = load_math_jsonl(tiny_gsm8k)
    assert (source.name, source.format, len(source)) == ("gsm8k/test", "gsm8k", 3)
    assert [t.answer for t in source.tasks] == ["30", "3600", "-3"]
    assert source[1].calculations == ("1200*2", "1200+2400")
    assert gsm8k_calculations("a <<2^3=8>>8 b <<4-1=3>>3") == ("4-1",)  # refused ones dropped


def test_math500_format_file_is_detected_by_its_keys(tmp_path):
    source = load_math_jsonl(write_jsonl(tmp_path / "math500" / "test.jsonl", TINY_MATH500))
    assert (source.name, source.format, len(source)) == ("math500/test", "math500", 2)
    assert source[0].question.startswith("What is") and source[0].answer == "\\frac{5}{6}"
    assert source[0].calculations == ()


def test_bad_files_name_the_file_and_line(tmp_path):
    unknown = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "q", "target": "1"}])
    with pytest.raises(ValueError, match=r"a\.jsonl:1: unknown math format.*'prompt'"):
        load_math_jsonl(unknown)
    mixed = write_jsonl(tmp_path / "b.jsonl", [TINY_MATH500[0], {"question": "q", "answer": "1"}])
    with pytest.raises(ValueError, match=r"b\.jsonl:2: not a math500 record"):
        load_math_jsonl(mixed)
    no_final = write_jsonl(tmp_path / "c.jsonl", [{"question": "q", "answer": "no marker"}])
    with pytest.raises(ValueError, match=r"c\.jsonl:1: .*####"):
        load_math_jsonl(no_final)
    empty_answer = write_jsonl(tmp_path / "d.jsonl", [{**TINY_MATH500[0], "answer": " "}])
    with pytest.raises(ValueError, match=r"d\.jsonl:1: field 'answer'"):
        load_math_jsonl(empty_answer)
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"e\.jsonl: no records"):
        load_math_jsonl(tmp_path / "e.jsonl")
    with pytest.raises(ValueError, match="existing GSM8K/MATH-500 JSONL file"):
        PythonToolEnv(dataset=str(tmp_path / "missing.jsonl"))


@module_loop
async def test_real_gsm8k_and_math500_files(registry, shared_data):
    gsm8k = make_env(registry, dataset=str(shared_data / "gsm8k" / "test.jsonl"))
    assert len(gsm8k.source) == 1319
    obs, info = await gsm8k.areset(options={"task_index": 0})
    assert info["task_id"] == "gsm8k/test:0" and info["answer"] == "18"
    assert obs[-1]["content"].startswith("Janet")
    code = json.loads(gsm8k.demonstration()[0]["tool_calls"][0]["function"]["arguments"])["code"]
    assert code == "print(16-3-4)\nprint(9*2)"

    math500 = make_env(registry, dataset=str(shared_data / "math500" / "test.jsonl"))
    assert len(math500.source) == 500
    _, info = await math500.areset(options={"task_index": 0})
    assert info["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    _, reward, *_ = await math500.astep("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}")
    assert reward == 1.0
    await math500.areset(options={"task_index": 0})
    assert (await math500.astep("\\boxed{(3, \\pi)}"))[1] == 0.0


# ---- demonstrations -----------------------------------------------------------------------


async def demos(make, seeds):
    client = ChatClient(ScriptedEngine(replies=[[5]]), char_tokenizer())
    return await build_demonstrations(make, ToolCallingAgent(max_turns=4), client, seeds=seeds)


@module_loop
async def test_demonstrations_are_gold_traces_scoring_one(registry, tiny_gsm8k, tmp_path):
    kept, stats = await demos(lambda: make_env(registry), range(4))
    assert stats.dropped == 0 and [d.reward for d in kept] == [1.0] * 4
    first = kept[0].messages
    call_args = json.loads(first[2]["tool_calls"][0]["function"]["arguments"])
    expression = call_args["code"].removeprefix("print(").removesuffix(")")
    assert first[1]["content"] == expression + "="  # prints the question's own expression
    assert first[3]["content"] == first[-1]["content"].removeprefix("\\boxed{").rstrip("}")

    kept, stats = await demos(lambda: make_env(registry, dataset=str(tiny_gsm8k)), range(3))
    assert stats.dropped == 0 and [d.num_turns for d in kept] == [2, 2, 2]

    math500 = write_jsonl(tmp_path / "math500" / "test.jsonl", TINY_MATH500)
    kept, stats = await demos(lambda: make_env(registry, dataset=str(math500)), range(3))
    assert stats.dropped == 0 and [d.num_turns for d in kept] == [1, 1, 1]
    assert all(d.metrics["tool_calls"] == 0.0 for d in kept)


# ---- the sandbox: fail closed, opt-in, shared --------------------------------------------


def test_construction_fails_without_bubblewrap_unless_opted_in(tmp_path):
    missing = str(tmp_path / "no-such-bwrap")
    registry = ResourceRegistry()
    with pytest.raises(SandboxUnavailableError, match=r"bubblewrap.*allow_unsandboxed"):
        PythonToolEnv(sandbox={"bwrap": missing, "pool_size": 0}, resources=registry)
    with pytest.raises(SandboxUnavailableError, match="install"):
        gym.make("areal/PythonTool-v0", sandbox={"bwrap": missing})
    opt_in = {"allow_unsandboxed": True, "allow_weaker_limits": True}  # any machine
    env = PythonToolEnv(
        sandbox={"bwrap": missing, "pool_size": 0, "timeout_s": 5, **opt_in}, resources=registry
    )
    assert env.sandboxed is False
    env.reset(options={"task_index": 0})
    obs = env.step(act(call("print(6 * 7)")))[0]
    assert obs[0]["content"] == "42"
    env.close()
    registry.close()


@module_loop
async def test_envs_of_one_registry_share_a_pool_closed_with_it(sandbox_available):
    registry = ResourceRegistry()
    a, b = make_env(registry), make_env(registry)
    other = make_env(registry, sandbox={**SANDBOX, "timeout_s": 2.0})
    assert a.sandboxes is b.sandboxes and other.sandboxes is not a.sandboxes
    box = await a.sandboxes.current()
    assert await b.sandboxes.current() is box and a.sandboxed
    await a.areset(options={"task_index": 0})
    assert (await a.astep(act(call("print(1)"))))[0][0]["content"] == "1"
    await box.wait_filled()
    assert box.warm == 1
    await registry.aclose()
    assert box.warm == 0
    with pytest.raises(RuntimeError, match="closed"):
        await box.run("print(1)")


def test_two_sync_envs_each_get_a_pool_on_their_own_loop(sandbox_available):
    registry = ResourceRegistry()
    a, b = make_env(registry), make_env(registry)
    assert a.sandboxes is b.sandboxes
    for env in (a, b):  # both alive at once, each on its own event loop
        env.reset(options={"task_index": 0})
    for env in (a, b):
        assert env.step(act(call("print('ok')")))[0][0]["content"] == "ok"
    a.close()
    b.close()
    registry.close()


def test_bad_options_fail_at_construction_naming_the_option(sandbox_available):
    cases = [
        ({"sandbox": {"timeout": 3}}, r"sandbox\.timeout"),
        ({"sandbox": {"memory_mb": 1}}, "sandbox.memory_mb"),
        ({"sandbox": "fast"}, "mapping"),
        ({"max_turns": 0}, "max_turns"),
        ({"max_calls_per_turn": 0}, "max_calls_per_turn"),
        ({"max_output_chars": 0}, "max_output_chars"),
        ({"prompt_template": "no field"}, "question"),
        ({"ops": ["/"]}, "ops"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            PythonToolEnv(**kwargs)


def test_output_is_cut_to_its_head_and_tail_with_a_note():
    text = "head" + "x" * 1000 + "the error line"
    out = cut_output(text, max_chars=100)
    assert out.startswith("head") and "the error line" in out
    assert out.endswith("[output cut: the first 75 and last 25 of 1018 characters shown]")
    assert cut_output("short", max_chars=100) == "short"


def test_loop_sandboxes_refuse_after_close(sandbox_available):
    pool = LoopSandboxes(SandboxConfig(pool_size=0))
    asyncio.run(pool.aclose())
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(pool.run("print(1)"))
