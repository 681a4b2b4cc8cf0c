"""areal/MultiTurnMath-v0: feedback after a wrong answer, another try, a discounted reward.

Mutations these tests were seen to catch (each applied by hand, the named tests failed,
then the code was restored):

- the discount dropped (a right answer always earns 1.0):
  ``test_reward_is_discount_to_the_power_of_the_turn``, ``test_feedback_then_second_try``,
  the agent test (wrong then right: reward = discount);
- the discount counted from 1 (``discount ** (turn + 1)``): the same tests;
- an off-by-one in the turn limit (``turn >= max_turns``):
  ``test_truncates_after_max_turns_wrong_answers``, ``test_one_turn_is_math_v0``;
- no feedback message after a wrong answer (``[]``): ``test_feedback_then_second_try``;
- every wrong answer ending the episode, as in Math-v0: ``test_feedback_then_second_try``,
  ``test_truncates_after_max_turns_wrong_answers`` and the discount tests.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.error import ResetNeeded

import areal_env  # noqa: F401  (registers areal/MultiTurnMath-v0)
from areal_env.agents.tool_calling import ToolCallingAgent
from areal_env.envs.math.env import MathEnv
from areal_env.envs.math.multi_turn import AREAL_FEEDBACK, DEFAULT_FEEDBACK, MultiTurnMathEnv
from areal_env.inference.chat_client import ChatClient
from areal_env.testing import ScriptedEngine, char_tokenizer


def wrong(answer: str) -> str:
    return str(int(answer) + 1)


def test_feedback_then_second_try() -> None:
    env = MultiTurnMathEnv(discount=0.5)
    obs, info = env.reset(seed=0)
    assert set(info) == {"task_id", "task_index", "answer"}
    obs, reward, terminated, truncated, step = env.step(wrong(info["answer"]))
    assert obs == [{"role": "user", "content": DEFAULT_FEEDBACK}]
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert step == {"correct": False, "answer": info["answer"], "turn": 0}
    obs, reward, terminated, truncated, step = env.step(info["answer"])
    assert (obs, reward, terminated, truncated) == ([], 0.5, True, False)
    assert step == {"correct": True, "answer": info["answer"], "turn": 1}
    with pytest.raises(ResetNeeded):
        env.step(info["answer"])


@pytest.mark.parametrize("discount", [0.5, 0.9])
@pytest.mark.parametrize("turn", [0, 1, 2, 3])
async def test_reward_is_discount_to_the_power_of_the_turn(discount: float, turn: int) -> None:
    env = MultiTurnMathEnv(max_turns=4, discount=discount)
    _, info = await env.areset(seed=turn)
    for _ in range(turn):
        obs, reward, *_ = await env.astep(wrong(info["answer"]))
        assert reward == 0.0 and obs[0]["role"] == "user"
    _, reward, terminated, _, step = await env.astep(info["answer"])
    assert reward == pytest.approx(discount**turn) and terminated and step["turn"] == turn
    await env.aclose()


def test_truncates_after_max_turns_wrong_answers() -> None:
    env = MultiTurnMathEnv(max_turns=3)
    _, info = env.reset(seed=2)
    for _ in range(2):
        _, reward, terminated, truncated, _ = env.step(wrong(info["answer"]))
        assert (reward, terminated, truncated) == (0.0, False, False)
    obs, reward, terminated, truncated, step = env.step(wrong(info["answer"]))
    assert (obs, reward, terminated, truncated) == ([], 0.0, False, True)
    assert step["turn"] == 2 and step["correct"] is False
    with pytest.raises(ResetNeeded):
        env.step(info["answer"])


def test_one_turn_is_math_v0() -> None:
    env, math = MultiTurnMathEnv(max_turns=1), MathEnv()
    assert env.reset(seed=4) == math.reset(seed=4)
    answer = env.reset(seed=4)[1]["answer"]
    assert env.step(wrong(answer))[1:4] == (0.0, False, True)
    env.reset(seed=4)
    assert env.step(answer)[1:4] == (1.0, True, False)


def test_options_data_and_validation(tiny_gsm8k: Path) -> None:
    env = gym.make(
        "areal/MultiTurnMath-v0", dataset=str(tiny_gsm8k), feedback=AREAL_FEEDBACK, discount=0.9
    )
    obs, info = env.reset(options={"task_index": 0})
    assert info == {"task_id": "gsm8k/test:0", "task_index": 0, "answer": "30"}
    assert obs[-1]["content"].startswith("Ann\u2019s hens")
    obs, *_ = env.step("29")
    assert obs == [{"role": "user", "content": AREAL_FEEDBACK}]
    assert env.step("30")[1] == pytest.approx(0.9)
    env.close()
    for kwargs, match in (
        ({"max_turns": 0}, "max_turns"),
        ({"discount": 1.5}, "discount"),
        ({"discount": True}, "discount"),
        ({"feedback": ""}, "feedback"),
    ):
        with pytest.raises(ValueError, match=match):
            MultiTurnMathEnv(**kwargs)


@pytest.mark.parametrize("replies", [["wrong", "right"], ["right"], ["wrong", "wrong"]])
async def test_tool_calling_agent_plays_the_retries(replies: list[str]) -> None:
    tok = char_tokenizer()
    env = MultiTurnMathEnv(max_turns=2, discount=0.5)
    _, info = await env.areset(seed=5)
    texts = [info["answer"] if r == "right" else wrong(info["answer"]) for r in replies]
    client = ChatClient(ScriptedEngine(replies=[tok.encode(t) for t in texts]), tok)
    traj = await ToolCallingAgent(max_turns=4).run(env, client.episode(), seed=5)
    expected = {("wrong", "right"): 0.5, ("right",): 1.0, ("wrong", "wrong"): 0.0}
    assert traj.reward == expected[tuple(replies)]
    assert traj.num_turns == len(replies) and traj.truncated == (replies[-1] == "wrong")
    roles = [m["role"] for m in traj.messages]
    assert roles == ["user"] + ["assistant", "user"] * (len(replies) - 1) + ["assistant"]
    if len(replies) == 2:
        assert traj.messages[2] == {"role": "user", "content": DEFAULT_FEEDBACK}
    # One token sequence: both answers trained on, the feedback read as prompt tokens.
    (sample,) = traj.samples
    pairs = list(zip(sample.input_ids, sample.loss_mask, strict=True))
    trained = tok.decode([t for t, m in pairs if m])
    prompt = tok.decode([t for t, m in pairs if not m])
    assert all(text in trained for text in texts)
    assert (DEFAULT_FEEDBACK in prompt) == (len(replies) == 2)
    assert DEFAULT_FEEDBACK not in trained
