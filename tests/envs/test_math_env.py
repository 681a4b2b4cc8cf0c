"""MathEnv through its async and sync APIs, on synthetic tasks and on GSM8K."""

from __future__ import annotations

import re
from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.error import InvalidAction, ResetNeeded

import areal_env  # noqa: F401  (registers areal/Math-v0)
import areal_env.envs.math.env as env_module
from areal_env.envs.base import AsyncEnv
from areal_env.envs.math.env import MathEnv
from areal_env.envs.spaces import ChatMessage, ChatMessages
from areal_env.errors import RewardError
from areal_env.rewards import math_verify
from areal_env.rollout.episode import FailureStats, run_with_retries
from areal_env.types import Trajectory


@pytest.fixture
def gsm8k_test(shared_data: Path) -> Path:
    return shared_data / "gsm8k" / "test.jsonl"


async def test_async_api_correct_answer() -> None:
    env = MathEnv()
    obs, info = await env.areset(seed=0)
    assert obs == [{"role": "user", "content": obs[0]["content"]}]
    assert set(info) == {"task_id", "task_index", "answer"}
    a, op, b = re.fullmatch(r"(\d+)([+-])(\d+)=", obs[0]["content"]).groups()
    assert info["answer"] == str(int(a) + int(b) if op == "+" else int(a) - int(b))
    message = {"role": "assistant", "content": f"\\boxed{{{info['answer']}}}"}
    obs, reward, terminated, truncated, step_info = await env.astep(message)
    assert (obs, reward, terminated, truncated) == ([], 1.0, True, False)
    assert step_info == {"correct": True, "answer": info["answer"]}
    await env.aclose()


async def test_async_api_wrong_answer() -> None:
    env = MathEnv()
    _, info = await env.areset(seed=1)
    wrong = str(int(info["answer"]) + 1)
    _, reward, terminated, _, step_info = await env.astep(wrong)
    assert reward == 0.0 and terminated
    assert step_info["correct"] is False


async def test_bare_number_answers_skip_the_verifier_thread(monkeypatch) -> None:
    import areal_env.envs.math.env as env_module

    calls = []

    async def counting_to_thread(fn, *args):
        calls.append(args)
        return fn(*args)

    monkeypatch.setattr(env_module.asyncio, "to_thread", counting_to_thread)
    env = MathEnv()
    _, info = await env.areset(seed=3)
    assert (await env.astep(f" {info['answer']}\n"))[1] == 1.0
    assert calls == []
    await env.areset(seed=3)
    assert (await env.astep(f"The answer is {info['answer']}."))[1] == 1.0
    assert len(calls) == 1
    await env.aclose()


async def test_a_verifier_timeout_raises_reward_error_out_of_astep(monkeypatch) -> None:
    monkeypatch.setattr(math_verify, "DEFAULT_TIMEOUT_S", 0.5)
    env = MathEnv()
    await env.areset(seed=0)
    # 9^9^9^9 keeps SymPy busy for minutes: no verdict, so no reward of 0.0 either.
    with pytest.raises(RewardError, match="timed out"):
        await env.astep("The answer is 9^9^9^9.")
    await env.aclose()


async def test_a_reward_error_fails_the_episode_visibly(monkeypatch) -> None:
    def verifier_down(text: str, gold: str) -> float:
        raise RewardError("the math-verify worker crashed (exit code -9)")

    monkeypatch.setattr(env_module, "score_response", verifier_down)

    async def attempt() -> Trajectory:
        env = MathEnv()
        await env.areset(seed=0)
        _, reward, *_ = await env.astep("The answer is 3.")
        return Trajectory(reward=reward)

    outcome = await run_with_retries(attempt, max_retries=0)
    assert outcome.trajectory is None and isinstance(outcome.error, RewardError)
    stats = FailureStats()
    stats.record(outcome)
    assert stats.as_metrics()["rollout/errors/RewardError"] == 1.0


def test_a_reward_error_propagates_out_of_sync_step(monkeypatch) -> None:
    def verifier_down(text: str, gold: str) -> float:
        raise RewardError("verifier down")

    monkeypatch.setattr(env_module, "score_response", verifier_down)
    env = MathEnv()
    env.reset(seed=0)
    with pytest.raises(RewardError, match="verifier down"):
        env.step("The answer is 3.")


def test_sync_api_through_gym_make() -> None:
    env = gym.make("areal/Math-v0", max_operand=9, ops=["*"], data_seed=5)
    obs, info = env.reset(seed=2)
    assert "*" in obs[-1]["content"]
    _, reward, terminated, truncated, step_info = env.step(f"It is {info['answer']}.")
    assert (reward, terminated, truncated, step_info["correct"]) == (1.0, True, False, True)
    env.close()


def test_thinking_is_not_an_answer() -> None:
    env = MathEnv()
    _, info = env.reset(seed=0)
    assert env.step(f"<think>maybe {info['answer']}")[1] == 0.0
    env.reset(seed=0)
    assert env.step(f"<think>hmm</think>{info['answer']}")[1] == 1.0


def test_task_index_option_and_task_id_are_stable() -> None:
    env_a, env_b = MathEnv(data_seed=3), MathEnv(data_seed=3)
    obs_a, info_a = env_a.reset(options={"task_index": 7})
    obs_b, info_b = env_b.reset(seed=99, options={"task_index": 7})
    assert obs_a == obs_b
    assert info_a["task_id"] == info_b["task_id"] == "synthetic-3:7"
    assert MathEnv(data_seed=4).reset(options={"task_index": 7})[1]["task_id"] == "synthetic-4:7"


def test_system_prompt_and_template() -> None:
    env = MathEnv(system_prompt="Be brief.", prompt_template="Q: {question}\nA:")
    obs, _ = env.reset(options={"task_index": 0})
    assert obs[0] == {"role": "system", "content": "Be brief."}
    assert obs[1]["role"] == "user"
    assert obs[1]["content"].startswith("Q: ") and obs[1]["content"].endswith("=\nA:")
    assert env.tools == []


def test_gsm8k_file(gsm8k_test: Path) -> None:
    env = MathEnv(dataset=str(gsm8k_test))
    assert len(env.source) == 1319
    obs, info = env.reset(options={"task_index": 0})
    assert obs[0]["content"].startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert info["answer"] == "18"
    assert info["task_id"] == "gsm8k/test:0"
    _, reward, _, _, step_info = env.step("She makes $18 every day, so \\boxed{18}.")
    assert reward == 1.0 and step_info["correct"]
    _, info = env.reset(options={"task_index": 1318})
    assert info["answer"] == "14"


def test_gsm8k_seeded_reset_covers_the_file(gsm8k_test: Path) -> None:
    env = gym.make("areal/Math-v0", dataset=gsm8k_test)
    indices = {env.reset(seed=s)[1]["task_index"] for s in range(20)}
    assert len(indices) > 10 and all(0 <= i < 1319 for i in indices)


def test_gsm8k_format_file(tiny_gsm8k: Path) -> None:
    # The checks above, on invented records in the same format: these run on a plain clone.
    env = MathEnv(dataset=str(tiny_gsm8k))
    assert len(env.source) == 3
    obs, info = env.reset(options={"task_index": 0})
    assert obs[0]["content"].startswith("Ann\u2019s hens lay 12 eggs a day.")
    assert info["answer"] == "30"
    assert info["task_id"] == "gsm8k/test:0"
    _, reward, _, _, step_info = env.step("She makes $30 every day, so \\boxed{30}.")
    assert reward == 1.0 and step_info["correct"]
    _, info = env.reset(options={"task_index": 2})
    assert info["answer"] == "-3"


def test_gsm8k_format_seeded_reset_covers_the_file(tiny_gsm8k: Path) -> None:
    env = gym.make("areal/Math-v0", dataset=tiny_gsm8k)
    assert {env.reset(seed=s)[1]["task_index"] for s in range(20)} == {0, 1, 2}


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"dataset": "no/such/file.jsonl"}, "dataset"),
        ({"dataset": 3}, "dataset"),
        ({"max_operand": 0}, "max_operand"),
        ({"max_operand": 2.5}, "max_operand"),
        ({"ops": ("/",)}, "ops"),
        ({"ops": "+"}, "ops"),
        ({"ops": ()}, "ops"),
        ({"system_prompt": 3}, "system_prompt"),
        ({"prompt_template": "no field"}, "prompt_template"),
        ({"prompt_template": "{q}"}, "prompt_template"),
        ({"prompt_template": "{question"}, "prompt_template"),
        ({"data_seed": "0"}, "data_seed"),
    ],
    ids=lambda v: v if isinstance(v, str) else repr(v),
)
def test_bad_kwargs_name_the_kwarg(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        MathEnv(**kwargs)
    with pytest.raises(ValueError, match=name):
        gym.make("areal/Math-v0", **kwargs)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"task_idx": 1}, "task_idx"),
        ({"task_index": -1}, r"must be an int in \[0, "),
        ({"task_index": 1_000_000}, r"must be an int in \[0, "),
        ({"task_index": "3"}, "must be an int"),
    ],
)
def test_bad_reset_options(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MathEnv().reset(options=options)


async def test_step_before_reset_and_after_termination() -> None:
    env = MathEnv()
    with pytest.raises(ResetNeeded, match="before reset"):
        await env.astep("1")
    await env.areset(seed=0)
    await env.astep("1")
    with pytest.raises(ResetNeeded, match="after the episode ended"):
        await env.astep("1")
    await env.areset(seed=0)
    assert (await env.astep("1"))[2] is True


def test_step_before_reset_sync() -> None:
    with pytest.raises(ResetNeeded):
        MathEnv().step("1")


@pytest.mark.parametrize(
    "action",
    [7, None, {"role": "user", "content": "1"}, {"role": "assistant"}, {"content": "1"}],
    ids=["int", "none", "user-role", "no-content", "no-role"],
)
async def test_invalid_action(action: object) -> None:
    env = MathEnv()
    await env.areset(seed=0)
    with pytest.raises(InvalidAction):
        await env.astep(action)  # type: ignore[arg-type]


async def test_sync_calls_inside_a_running_loop_raise() -> None:
    env = MathEnv()
    with pytest.raises(RuntimeError, match=r"await env\.areset"):
        env.reset(seed=0)
    await env.areset(seed=0)
    with pytest.raises(RuntimeError, match=r"await env\.astep"):
        env.step("1")
    # The refused calls changed nothing: the episode is still open.
    assert (await env.astep("1"))[2] is True


async def test_sync_close_inside_a_running_loop_still_runs_aclose() -> None:
    closed = []

    class Tracked(MathEnv):
        async def aclose(self) -> None:
            closed.append(True)

    Tracked().close()
    assert closed == [True]


def test_spaces_of_math_env() -> None:
    env = MathEnv()
    assert isinstance(env, AsyncEnv)
    assert env.observation_space == ChatMessages(roles=("system", "user"), max_messages=2)
    assert env.action_space == ChatMessage(roles=("assistant",), allow_str=True)


def test_chat_spaces_contains() -> None:
    action_space = ChatMessage(roles=("assistant",), allow_str=True)
    call = {"id": "c0", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    assert {"role": "assistant", "content": "", "tool_calls": [call]} in action_space
    assert {"role": "assistant", "content": "x", "refusal": None} in action_space
    assert {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {}}],
    } not in action_space
    assert {"role": "assistant", "content": "", "tool_calls": call} not in action_space
    assert {"role": "assistant", "content": 3} not in action_space
    # OpenAI's shape for a tool-call-only message; None is not text anywhere else.
    assert {"role": "assistant", "content": None, "tool_calls": [call]} in action_space
    assert {"role": "assistant", "content": None} not in action_space
    assert {"role": "user", "content": None, "tool_calls": [call]} not in ChatMessage()
    assert "x" * (action_space.max_length + 1) not in action_space
    assert "x" not in ChatMessage(roles=("assistant",))
    obs_space = ChatMessages(max_messages=2)
    tool_msg = {"role": "tool", "tool_call_id": "c0", "content": "result"}
    assert [tool_msg] in obs_space
    assert [{"role": "tool", "content": "r", "tool_calls": []}] not in obs_space
    assert [tool_msg] * 3 not in obs_space
    assert (tool_msg,) not in obs_space


def test_chat_spaces_sample_is_seeded_and_valid() -> None:
    for space in (ChatMessage(roles=("assistant",), allow_str=True), ChatMessages()):
        space.seed(0)
        first = [space.sample() for _ in range(5)]
        space.seed(0)
        assert [space.sample() for _ in range(5)] == first
        assert all(s in space for s in first)
    with pytest.raises(ValueError, match="mask"):
        ChatMessages().sample(mask=[1])


async def test_failed_reset_closes_the_previous_episode() -> None:
    env = MathEnv()
    await env.areset(seed=0)
    with pytest.raises(ValueError, match="task_idx"):
        await env.areset(options={"task_idx": 0})
    with pytest.raises(ResetNeeded):
        await env.astep("1")
