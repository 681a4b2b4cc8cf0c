"""MathEnv's reward: the final answer of the assistant's text, checked by Math-Verify.

Thinking is removed first; the rest goes to
:func:`~areal_env.rewards.math_verify.math_reward`, which extracts the final answer
(the last box, else the last stated answer, else the whole reply; the rules are in
:mod:`areal_env.rewards.answer_extraction`) and compares it with the gold one.

Example:
    >>> score_response("<think>maybe 84</think>The answer is 85.", "85")
    1.0
"""

from __future__ import annotations

from areal_env.rewards.math_verify import instant_math_reward, math_reward


def strip_thinking(text: str) -> str:
    """Drop a ``<think>...</think>`` block, keeping only the final reply.

    A reply whose thinking never closed has no final reply, so it becomes ``""``.

    Example:
        >>> strip_thinking("<think>2+2</think>4"), strip_thinking("<think>2+2 is 4")
        ('4', '')
    """
    if "</think>" in text:
        return text.rsplit("</think>", 1)[-1]
    return "" if "<think>" in text else text


def score_response(text: str, gold: str) -> float:
    """1.0 when the reply (thinking removed) states an answer equal to ``gold``, else 0.0.

    Numbers inside the thinking block never count, so a reply cut off while
    thinking scores 0.0. After it, the boxed answer counts, else the stated one
    (``The answer is 42. Check: 42 + 8 = 50.`` answers 42), else the last number.
    Blocking on a cache miss: call it via ``asyncio.to_thread``.

    Args:
        text: the assistant message's content.
        gold: the task's answer.

    Raises:
        RewardError: the verifier timed out, crashed or could not start (see
            :func:`~areal_env.rewards.math_verify.math_reward`); not a 0.0.
    """
    return math_reward(strip_thinking(text), gold)


def instant_score(text: str, gold: str) -> float | None:
    """:func:`score_response` when it needs no verifier call, else None (never blocks)."""
    return instant_math_reward(strip_thinking(text), gold)


__all__ = ["instant_score", "score_response", "strip_thinking"]
