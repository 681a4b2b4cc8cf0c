"""MultiTurnMathEnv (``areal/MultiTurnMath-v0``): a wrong answer is told so and may try again.

The tasks, prompt and verifier are Math-v0's (synthetic arithmetic or GSM8K-format JSONL,
Math-Verify on the final answer). What changes is the episode: after a wrong answer the
env replies with a user message (``feedback``, by default "That is not correct. Try
again.") and the model answers again, up to ``max_turns`` answers. A correct answer at
turn ``t`` (0-based) terminates the episode with reward ``discount ** t``; every wrong
answer gets 0.0, and the ``max_turns``-th wrong answer truncates the episode (no feedback
follows it). An agent that sums step rewards, like ``ToolCallingAgent``
(``agent.name=tool_calling``, which also plays envs without tools), so earns
``discount ** t`` for the episode, or 0.0.

This is AReaL's multi-turn math recipe, at the level of the env:

- ``areal/workflow/multi_turn.py`` (``MultiTurnWorkflow``, inclusionAI/AReaL): the model
  answers, a wrong answer appends the user turn "Your answer is either wrong or not
  parsable to the reward function. You may misunderstand the original question. Please
  carefully read the original question, check the previous errors, and try to answer it
  again." (:data:`AREAL_FEEDBACK`), up to ``max_turns``; the episode's one concatenated
  sequence is scored ``reward * turn_discount ** t``, ``t`` the failed tries before the
  correct one. That is the reward here. (The version read multiplies the exported reward
  tensor by the discount once more, ``turn_discount ** (2t)``, which looks like a slip.)
- ``examples/multi_turn_math/gsm8k_rl_mt.py`` (the newer example on the OpenAI-style
  client): the same loop with ``max_turns: 2`` (``gsm8k_grpo_mt.yaml``), a reward of 1/0
  per completion, then ``client.apply_reward_discount(turn_discount=0.9)``, i.e.
  ``reward[i] += 0.9 * reward[i+1]`` backwards, so the first answer of an episode that is
  right at turn ``t`` is credited ``0.9 ** t`` too.

Defaults: ``discount=0.9`` (AReaL's value), ``max_turns=3``, and a short feedback message
(the character-level tiny model pays for every character of the history; pass
``feedback=AREAL_FEEDBACK`` for AReaL's wording).

Example:
    >>> env = MultiTurnMathEnv(max_turns=2, discount=0.5)
    >>> _, info = env.reset(options={"task_index": 0})
    >>> wrong = str(int(info["answer"]) + 1)
    >>> obs, reward, terminated, truncated, step = env.step(wrong)
    >>> obs, reward, terminated, truncated, step["turn"], step["correct"]
    ([{'role': 'user', 'content': 'That is not correct. Try again.'}], 0.0, False, False, 0, False)
    >>> env.step(info["answer"])[1:4]
    (0.5, True, False)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from areal_env.envs.base import Message, StepResult
from areal_env.envs.math.data import SYNTHETIC
from areal_env.envs.math.env import MathEnv
from areal_env.envs.math.reward import instant_score, score_response
from areal_env.resources import ResourceRegistry
from areal_env.rollout.activity import phase

DEFAULT_FEEDBACK = "That is not correct. Try again."
"""The user message after a wrong answer."""

AREAL_FEEDBACK = (
    "Your answer is either wrong or not parsable to the reward function. You may "
    "misunderstand the original question. Please carefully read the original question, "
    "check the previous errors, and try to answer it again."
)
"""AReaL's multi-turn math feedback message, for ``feedback=``."""


class MultiTurnMathEnv(MathEnv):
    """Math-v0 with retries: feedback after a wrong answer, reward ``discount ** turn``.

    Args:
        dataset: as Math-v0: ``"synthetic"`` or a GSM8K-format JSONL path.
        max_turns: answers allowed per episode (>= 1); 1 is Math-v0.
        discount: reward factor per extra turn, in ``[0, 1]``.
        feedback: content of the user message after a wrong answer.
        max_operand, ops, system_prompt, prompt_template, data_seed, resources: as Math-v0.

    Reset ``info`` is Math-v0's (``task_id``, ``task_index``, ``answer``). Step ``info``:
    ``correct``, ``answer`` (the gold string), ``turn`` (0-based index of the answer just
    checked). A step whose reward cannot be computed raises
    :class:`~areal_env.errors.RewardError`, as in Math-v0.
    """

    def __init__(
        self,
        dataset: str | Path = SYNTHETIC,
        *,
        max_turns: int = 3,
        discount: float = 0.9,
        feedback: str = DEFAULT_FEEDBACK,
        max_operand: int = 99,
        ops: Sequence[str] = ("+", "-"),
        system_prompt: str | None = None,
        prompt_template: str = "{question}",
        data_seed: int = 0,
        resources: ResourceRegistry | None = None,
    ) -> None:
        super().__init__(
            dataset,
            max_operand=max_operand,
            ops=ops,
            system_prompt=system_prompt,
            prompt_template=prompt_template,
            data_seed=data_seed,
            resources=resources,
        )
        if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1:
            raise ValueError(f"max_turns must be an int >= 1, got {max_turns!r}")
        if isinstance(discount, bool) or not isinstance(discount, (int, float)):
            raise ValueError(f"discount must be a number in [0, 1], got {discount!r}")
        if not 0.0 <= discount <= 1.0:
            raise ValueError(f"discount must be in [0, 1], got {discount!r}")
        if not isinstance(feedback, str) or not feedback:
            raise ValueError(f"feedback must be a non-empty str, got {feedback!r}")
        self.max_turns, self.discount, self.feedback = max_turns, float(discount), feedback

    def max_turns_reached(self, turn: int) -> bool:
        """True when the answer at 0-based ``turn`` was the last one allowed."""
        return turn + 1 >= self.max_turns

    async def _astep(self, message: Message) -> StepResult:
        assert self._task is not None, "AsyncEnv.astep guarantees a reset came first"
        turn, gold = self.num_steps, self._task.answer
        text = message.get("content") or ""
        score = instant_score(text, gold)
        if score is None:
            # Off the event loop, as in Math-v0; a RewardError propagates (no verdict).
            with phase("reward"):
                score = await asyncio.to_thread(score_response, text, gold)
        info = {"correct": score == 1.0, "answer": gold, "turn": turn}
        if info["correct"]:
            return [], self.discount**turn, True, False, info
        if self.max_turns_reached(turn):
            return [], 0.0, False, True, info
        return [{"role": "user", "content": self.feedback}], 0.0, False, False, info


__all__ = ["AREAL_FEEDBACK", "DEFAULT_FEEDBACK", "MultiTurnMathEnv"]
