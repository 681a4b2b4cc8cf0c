r"""Math answer reward with HuggingFace Math-Verify, in a process pool, cached.

``math_reward(response, gold)`` is 1.0 when Math-Verify finds the response's
final answer equal to the gold one (``\boxed{85}``, ``85`` and ``85.0`` all match
``85``), else 0.0; a response Math-Verify cannot parse scores 0.0 too, as that
is a verdict. A check that cannot give a verdict raises
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


# No leading "+": Math-Verify does not read "+12" as 12, and we must agree with it.
_PLAIN_NUMBER = re.compile(r"-?(\d+(\.\d*)?|\.\d+)")


def plain_number_verdict(response: str, gold: str) -> bool | None:
    r"""Compare two bare decimal numbers exactly; None when either is anything else.

    Math-Verify spends about a millisecond per uncached call, as much as
    sampling a short answer on CPU. When response and gold are both nothing but
    a decimal number (``"85"``, ``" -3.50 "``), the verdict needs no parsing:
    equal values. Anything else (LaTeX, words, units, expressions) goes to
    Math-Verify. A test checks both paths agree on such inputs.

    Example:
        >>> plain_number_verdict(" 85.0", "85"), plain_number_verdict("\\boxed{85}", "85")
        (True, None)
    """
    r, g = response.strip(), gold.strip()
    if not (_PLAIN_NUMBER.fullmatch(r) and _PLAIN_NUMBER.fullmatch(g)):
        return None
    return decimal.Decimal(r) == decimal.Decimal(g)


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

    Verdicts are cached on ``(response, gold)``; input that is not a string,
    or that Math-Verify cannot parse, scores 0.0. Blocks on a miss (up to
    ``DEFAULT_TIMEOUT_S`` once a worker has taken the check), so call it via
    ``asyncio.to_thread`` from async code.

    Args:
        response: the model's text; its final answer is extracted by Math-Verify.
        gold: the reference answer, e.g. ``"72"`` or ``"\frac{1}{2}"``.

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
    return 1.0 if verify_answer(response, gold) else 0.0


def verify_answer(response: str, gold: str, *, timeout_s: float | None = None) -> bool:
    """Uncached, time-limited check that ``response`` answers ``gold``; thread-safe.

    Args:
        response: the model's text (only its last ``MAX_RESPONSE_CHARS`` are parsed).
        gold: the reference answer.
        timeout_s: how long the check may run once a worker has taken it;
            ``DEFAULT_TIMEOUT_S`` when None.

    Returns:
        True when Math-Verify finds the answers equivalent; False when it does
        not, or cannot parse either side.

    Raises:
        RewardError: the check ran past ``timeout_s``, its worker crashed, or no
            worker could start; the message names which and quotes the response.
    """
    timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    response = response[-MAX_RESPONSE_CHARS:]
    try:
        return _check(response, gold, timeout_s)
    except RuntimeError as e:  # pebble's BrokenProcessPool, or a pool that already broke
        # Workers that die while none runs a check break the whole pool; a
        # fresh one gets a second chance before this counts as a failure.
        logger.warning("math-verify pool broke (%r); starting a new one", e)
    try:
        return _check(response, gold, timeout_s)
    except RuntimeError as e:
        raise RewardError(
            f"math-verify workers crashed or could not start ({e!r}; is math-verify "
            f"installed?) while checking {_excerpt(response)}"
        ) from e


def _check(response: str, gold: str, timeout_s: float) -> bool:
    future = _get_pool().schedule(_verify_in_worker, (response, gold), timeout=timeout_s)
    try:
        return future.result(timeout=STARTUP_TIMEOUT_S + timeout_s)
    except concurrent.futures.TimeoutError as e:
        if future.done():  # pebble's timeout: it has killed the worker
            raise RewardError(
                f"math-verify timed out after {timeout_s:g}s on {_excerpt(response)}"
            ) from e
        future.cancel()
        raise RewardError(
            f"no math-verify worker took the check within {STARTUP_TIMEOUT_S:g}s "
            f"({_excerpt(response)})"
        ) from e
    except ProcessExpired as e:
        raise RewardError(
            f"the math-verify worker crashed (exit code {e.exitcode}) on {_excerpt(response)}"
        ) from e


def _excerpt(text: str, limit: int = 80) -> str:
    """``a 1234-char response '...'``, the middle of a long text cut out."""
    shown = text if len(text) <= limit else f"{text[: limit // 4]}...{text[-limit * 3 // 4 :]}"
    return f"a {len(text)}-char response {shown!r}"


def _start_worker() -> None:
    """Pool initializer: import Math-Verify before taking checks, so no timeout pays for it."""
    import math_verify  # noqa: F401  (an ImportError here fails the worker, visibly)

    logging.disable(logging.CRITICAL)  # Math-Verify logs every parse failure


def _verify_in_worker(response: str, gold: str) -> bool:
    """Runs in a verifier process: Math-Verify's verdict, False when it cannot parse."""
    import math_verify

    try:
        gold_parsed = math_verify.parse(gold, parsing_timeout=None)
        if not gold_parsed:
            return False
        parsed = math_verify.parse(response, parsing_timeout=None)
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
    "MAX_RESPONSE_CHARS",
    "NUM_WORKERS",
    "extract_gsm8k_answer",
    "instant_math_reward",
    "math_reward",
    "plain_number_verdict",
    "verify_answer",
]
