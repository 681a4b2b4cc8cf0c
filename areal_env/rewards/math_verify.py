r"""Math answer reward with HuggingFace Math-Verify, in a process pool, cached.

``math_reward(response, gold)`` is 1.0 when the response's final answer equals
the gold one (``\boxed{85}``, ``85`` and ``85.0`` all match ``85``), else 0.0; a
response Math-Verify cannot parse scores 0.0 too, as that is a verdict. A check
goes in three steps:

1. **Extract** the final answer (:mod:`~areal_env.rewards.answer_extraction`,
   whose docstring lists the rules): the last ``\boxed{}``, else the last stated
   answer (``answer is``, ``Answer:``, ``####``) up to the end of its sentence,
   else the whole response. Math-Verify left to itself reads past a stated answer
   into a check line (``The answer is 42. Check: 42 + 8 = 50.`` scored 50) and
   reads a bare LaTeX gold such as ``\left( 3, \frac{\pi}{2} \right)`` as 3.
2. **Fast path**: when the answer and the gold are both plain decimal numbers,
   :func:`plain_number_verdict` gives Math-Verify's verdict without calling it,
   only where it provably agrees (ASCII digits, integers exactly, decimals within
   float precision); a test checks that on thousands of random pairs.
3. **Math-Verify** in a worker process, on the forms of answer and gold that the
   extraction chose.

A check that cannot give a verdict raises
:class:`~areal_env.errors.RewardError` instead, because a broken verifier must
not read as a wrong answer: the check ran past its timeout, or its worker
process crashed or could not start. It never hangs, from any thread:

- Math-Verify's own timeouts use ``signal.alarm``, which only works in the main
  thread, while RL rewards run in worker threads (``asyncio.to_thread``). Worse,
  an answer such as ``9^9^9^9`` sends SymPy into a single C-level integer power
  that holds the GIL, which neither a signal nor a watchdog thread can interrupt.
  So the checks run in a small ``pebble.ProcessPool`` (``NUM_WORKERS``
  processes, started on first use); pebble kills a check that runs past
  ``timeout_s`` and replaces its worker, and so it does for a worker that dies.
- The workers are fresh interpreters that import only this module and
  Math-Verify (about a second to start). They are not forks, since the trainer
  holds torch and its threads. Nor do they re-run the parent's ``__main__``,
  which multiprocessing's spawn normally does and which would import the
  trainer script and torch in each of them.
- Only the last ``MAX_RESPONSE_CHARS`` characters are parsed (final answers come
  last), which bounds the cost of Math-Verify's regexes on long garbage.
- Verdicts are memoised on ``(response, gold)`` in an LRU cache: a small policy
  repeats the same outputs thousands of times during RL. Errors are not cached.

Example:
    >>> math_reward("so the answer is \\boxed{85}", "85")
    1.0
    >>> math_reward("84", "85")
    0.0
    >>> extract_gsm8k_answer("She makes 9 * 2 = $<<9*2=18>>18\n#### 1,018")
    '1018'
"""

from __future__ import annotations

import atexit
import concurrent.futures
import decimal
import functools
import logging
import multiprocessing.context
import multiprocessing.spawn
import os
import re
import threading
from collections.abc import Callable
from typing import Any

from pebble import ProcessExpired, ProcessPool

from areal_env.errors import RewardError
from areal_env.rewards.answer_extraction import (
    FinalAnswer,
    final_answer,
    gold_candidates,
    set_against_tuple,
)

logger = logging.getLogger(__name__)

MAX_RESPONSE_CHARS = 4096
"""Only this many trailing characters of a response are parsed."""

DEFAULT_TIMEOUT_S = 5.0
"""Seconds one uncached check may run before it raises RewardError."""

STARTUP_TIMEOUT_S = 120.0
"""Seconds a check may wait for a worker to start and take it, beyond its own timeout."""

NUM_WORKERS = min(4, os.cpu_count() or 1)
"""Verifier processes in the pool, all started on first use."""

CACHE_SIZE = 1 << 16
"""Entries kept by the ``(response, gold)`` LRU cache."""

WORKER_NAME = "areal-math-verify"
"""The ``multiprocessing`` name of the verifier processes."""


MAX_EXACT_DIGITS = 15
"""A decimal with more significant digits than this goes to Math-Verify (float precision)."""

MAX_EXACT_DECIMALS = 6
"""A decimal with more digits after the point than this goes to Math-Verify (it rounds to 6)."""

# ASCII digits only: a bare \d accepts "٣" and "３", which Decimal reads as 3 and
# Math-Verify not at all. Nor does Math-Verify read "+12", "-.5" or "-03" as a number
# (nor a boxed "3."): none of them is plain here.
_PLAIN_NUMBER = re.compile(r"(?!-0[0-9])-?[0-9]+(?:\.[0-9]+)?|\.[0-9]+")
_ASCII_SPACE = " \t\r\n"


def plain_number_verdict(response: str, gold: str) -> bool | None:
    r"""Math-Verify's verdict on two bare decimal numbers, without calling it; else None.

    Math-Verify spends about a millisecond per uncached call, as much as
    sampling a short answer on CPU. When response and gold are both nothing but
    a plain decimal number (``"85"``, ``" -3.50 "``), its verdict is known:
    integers compare exactly, and a decimal compares by value as long as
    Math-Verify's own float handling cannot blur it: at most ``MAX_EXACT_DECIMALS``
    digits after the point (it rounds both sides to 6 decimals, so ``0.1234565``
    equals ``0.1234564`` there) and ``MAX_EXACT_DIGITS`` significant digits
    (15-digit floats). Anything else (LaTeX, words, units, expressions, ``+12``,
    non-ASCII digits, longer decimals) is None and goes to Math-Verify. A test
    checks the claim on thousands of random pairs against Math-Verify.

    Example:
        >>> plain_number_verdict(" 85.0", "85"), plain_number_verdict("\\boxed{85}", "85")
        (True, None)
        >>> plain_number_verdict("0.1234565", "0.1234564") is None
        True
    """
    r, g = response.strip(_ASCII_SPACE), gold.strip(_ASCII_SPACE)
    if not (_PLAIN_NUMBER.fullmatch(r) and _PLAIN_NUMBER.fullmatch(g)):
        return None
    if "." not in r and "." not in g:
        return int(r) == int(g)
    a, b = decimal.Decimal(r), decimal.Decimal(g)
    if not (_float_safe(a) and _float_safe(b)):
        return None
    return a == b


def _float_safe(number: decimal.Decimal) -> bool:
    """Whether Math-Verify's floats (15 digits, rounded to 6 decimals) keep ``number`` exact."""
    _, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # finite: it matched _PLAIN_NUMBER
    significant = "".join(map(str, digits)).lstrip("0")
    return -exponent <= MAX_EXACT_DECIMALS and len(significant) <= MAX_EXACT_DIGITS


def instant_math_reward(response: str, gold: str) -> float | None:
    """The reward when it needs no verifier call (both sides bare numbers), else None.

    Cheap enough for the event loop: async callers try this first and only
    hand the misses to a thread running :func:`math_reward`. A response or gold
    that is not a ``str`` scores 0.0 here.

    Example:
        >>> instant_math_reward("85", "85"), instant_math_reward("x = 85", "85")
        (1.0, None)
    """
    if not isinstance(response, str) or not isinstance(gold, str):
        return 0.0
    plain = plain_number_verdict(response, gold)
    return None if plain is None else float(plain)


def math_reward(response: str, gold: str) -> float:
    r"""Score a model response against a gold answer: 1.0 if equivalent, else 0.0.

    The response's final answer is extracted first (:func:`final_answer`: the
    last box, else the stated answer, else the whole response), then compared
    by the bare-number fast path or by Math-Verify. Verdicts are cached on
    ``(response, gold)``; input that is not a string, or that Math-Verify cannot
    parse, scores 0.0. Blocks on a miss (up to ``DEFAULT_TIMEOUT_S`` once a
    worker has taken the check), so call it via ``asyncio.to_thread`` from async code.

    Args:
        response: the model's text (only its last ``MAX_RESPONSE_CHARS`` are read).
        gold: the reference answer, e.g. ``"72"`` or ``"\frac{1}{2}"`` (bare LaTeX
            is read as LaTeX).

    Returns:
        1.0 or 0.0.

    Raises:
        RewardError: the check timed out, its worker crashed, or no worker could
            start (e.g. math-verify is not installed): none of these is a verdict.

    Example:
        >>> math_reward("85.0", "85"), math_reward("garbage ]]{", "85")
        (1.0, 0.0)
    """
    instant = instant_math_reward(response, gold)
    if instant is not None:
        return instant
    return _cached_reward(response, gold)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _cached_reward(response: str, gold: str) -> float:
    # lru_cache stores return values only: a RewardError raised here is not cached.
    answer = final_answer(response[-MAX_RESPONSE_CHARS:])
    plain = plain_number_verdict(answer.text, gold)  # "The answer is 72." needs no worker
    if plain is not None:
        return float(plain)
    return 1.0 if _verdict(answer, gold, DEFAULT_TIMEOUT_S) else 0.0


def verify_answer(response: str, gold: str, *, timeout_s: float | None = None) -> bool:
    """Uncached, time-limited check that ``response`` answers ``gold``; thread-safe.

    The same verdict as :func:`math_reward` without the cache and without the
    bare-number fast path: every call reaches Math-Verify (unless the answer is
    a set against a tuple), so it is the reference the fast path is tested against.

    Args:
        response: the model's text (only its last ``MAX_RESPONSE_CHARS`` are read).
        gold: the reference answer.
        timeout_s: how long the check may run once a worker has taken it;
            ``DEFAULT_TIMEOUT_S`` when None.

    Returns:
        True when Math-Verify finds the final answer equivalent; False when it
        does not, or cannot parse either side.

    Raises:
        RewardError: the check ran past ``timeout_s``, its worker crashed, or no
            worker could start; the message names which and quotes the answer.
    """
    timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    return _verdict(final_answer(response[-MAX_RESPONSE_CHARS:]), gold, timeout_s)


def _verdict(answer: FinalAnswer, gold: str, timeout_s: float) -> bool:
    """Our verdict on an extracted answer: the set/tuple rule, then Math-Verify in a worker."""
    if set_against_tuple(answer.text, gold):
        return False
    args = (answer.candidates, gold_candidates(gold))
    try:
        return _check(args, answer.text, timeout_s)
    except RuntimeError as e:  # pebble's BrokenProcessPool, or a pool that already broke
        # Workers that die while none runs a check break the whole pool; a
        # fresh one gets a second chance before this counts as a failure.
        logger.warning("math-verify pool broke (%r); starting a new one", e)
    try:
        return _check(args, answer.text, timeout_s)
    except RuntimeError as e:
        raise RewardError(
            f"math-verify workers crashed or could not start ({e!r}; is math-verify "
            f"installed?) while checking {_excerpt(answer.text)}"
        ) from e


def _check(args: tuple[tuple[str, ...], tuple[str, ...]], shown: str, timeout_s: float) -> bool:
    future = _get_pool().schedule(_verify_in_worker, args, timeout=timeout_s)
    try:
        return future.result(timeout=STARTUP_TIMEOUT_S + timeout_s)
    except concurrent.futures.TimeoutError as e:
        if future.done():  # pebble's timeout: it has killed the worker
            raise RewardError(
                f"math-verify timed out after {timeout_s:g}s on {_excerpt(shown)}"
            ) from e
        future.cancel()
        raise RewardError(
            f"no math-verify worker took the check within {STARTUP_TIMEOUT_S:g}s "
            f"({_excerpt(shown)})"
        ) from e
    except ProcessExpired as e:
        raise RewardError(
            f"the math-verify worker crashed (exit code {e.exitcode}) on {_excerpt(shown)}"
        ) from e


def _excerpt(text: str, limit: int = 80) -> str:
    """``a 1234-char answer '...'``, the middle of a long text cut out."""
    shown = text if len(text) <= limit else f"{text[: limit // 4]}...{text[-limit * 3 // 4 :]}"
    return f"a {len(text)}-char answer {shown!r}"


def _start_worker() -> None:
    """Pool initializer: import Math-Verify before taking checks, so no timeout pays for it."""
    import math_verify  # noqa: F401  (an ImportError here fails the worker, visibly)

    logging.disable(logging.CRITICAL)  # Math-Verify logs every parse failure


def _verify_in_worker(answers: tuple[str, ...], golds: tuple[str, ...]) -> bool:
    """Runs in a verifier process: Math-Verify's verdict, False when it cannot parse.

    Each side is a list of ways to write it (see :func:`final_answer`); the first
    that Math-Verify parses into a math object is compared.
    """
    import math_verify

    def first_parsed(texts: tuple[str, ...]) -> list[Any]:
        fallback: list[Any] = []  # strings only: Math-Verify compares them as strings
        for text in texts:
            parsed = math_verify.parse(text, parsing_timeout=None)
            if any(not isinstance(p, str) for p in parsed):
                return parsed
            fallback = fallback or parsed
        return fallback

    try:
        gold_parsed = first_parsed(golds)
        if not gold_parsed:
            return False
        parsed = first_parsed(answers)
        return bool(parsed) and bool(math_verify.verify(gold_parsed, parsed, timeout_seconds=None))
    except Exception:  # e.g. RecursionError on deeply nested LaTeX: unparsable
        return False


class _VerifierProcess(multiprocessing.context.SpawnProcess):
    """A spawned process named ``WORKER_NAME``, which :func:`_preparation_data` spots."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = WORKER_NAME


class _VerifierContext(multiprocessing.context.SpawnContext):
    """The spawn context, making :class:`_VerifierProcess` processes."""

    Process = _VerifierProcess


_wrapped_preparation_data: Callable[[str], dict[str, Any]] | None = None


def _preparation_data(name: str) -> dict[str, Any]:
    # What a spawned child sets up before unpickling its target. Spawn re-runs the
    # parent's __main__ there so that functions pickled from __main__ resolve; ours
    # come from this module, and a trainer's __main__ imports torch.
    assert _wrapped_preparation_data is not None
    data = _wrapped_preparation_data(name)
    if name == WORKER_NAME:
        data.pop("init_main_from_name", None)
        data.pop("init_main_from_path", None)
    return data


def _hook_preparation_data() -> None:
    """Wrap ``multiprocessing.spawn.get_preparation_data`` once (a no-op for other processes)."""
    global _wrapped_preparation_data
    if _wrapped_preparation_data is None:
        _wrapped_preparation_data = multiprocessing.spawn.get_preparation_data
        multiprocessing.spawn.get_preparation_data = _preparation_data


_pool: ProcessPool | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def _get_pool() -> ProcessPool:
    """The running pool, started on first use and again after it broke or after a fork."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is not None and _pool_pid == os.getpid() and _pool.active:
            return _pool
        if _pool is not None and _pool_pid == os.getpid():
            _stop(_pool)
        _hook_preparation_data()
        _pool = ProcessPool(NUM_WORKERS, initializer=_start_worker, context=_VerifierContext())
        _pool_pid = os.getpid()
        return _pool


def _stop(pool: ProcessPool) -> None:
    pool.stop()
    pool.join()


@atexit.register
def _shutdown() -> None:
    if _pool is not None and _pool_pid == os.getpid():
        _stop(_pool)


def extract_gsm8k_answer(answer: str) -> str:
    r"""The final answer of a GSM8K solution: the text after the last ``####``, commas removed.

    Args:
        answer: a GSM8K ``answer`` field, e.g. ``"...\n#### 1,234"``.

    Returns:
        The answer string, e.g. ``"1234"``.

    Raises:
        ValueError: there is no ``####`` marker, or nothing follows it.

    Example:
        >>> extract_gsm8k_answer("2 + 70 = <<2+70=72>>72\n#### 72")
        '72'
    """
    head, sep, tail = answer.rpartition("####")
    final = tail.strip().replace(",", "")
    if not sep:
        raise ValueError("GSM8K answer has no '#### <answer>' line")
    if not final:
        raise ValueError("GSM8K answer has nothing after '####'")
    return final


__all__ = [
    "CACHE_SIZE",
    "DEFAULT_TIMEOUT_S",
    "MAX_EXACT_DECIMALS",
    "MAX_EXACT_DIGITS",
    "MAX_RESPONSE_CHARS",
    "NUM_WORKERS",
    "extract_gsm8k_answer",
    "instant_math_reward",
    "math_reward",
    "plain_number_verdict",
    "verify_answer",
]
