r"""Math answer reward with HuggingFace Math-Verify, guarded and cached.

``math_reward(response, gold)`` is 1.0 when Math-Verify finds the response's
final answer equal to the gold one (``\boxed{85}``, ``85`` and ``85.0`` all match
``85``), else 0.0. It never raises and never hangs, from any thread:

- Math-Verify's own timeouts use ``signal.alarm``, which only works in the main
  thread, while RL rewards run in worker threads (``asyncio.to_thread``). Worse,
  an answer such as ``9^9^9^9`` sends SymPy into a single C-level integer power
  that holds the GIL, which neither a signal nor a watchdog thread can interrupt.
  So the checks run in verifier subprocesses (``python -m
  areal_env.rewards.math_verify``, a JSON-lines loop, started on first use and
  reused); a check that runs past ``timeout_s`` scores 0.0 and its process is
  killed and restarted.
- Only the last ``MAX_RESPONSE_CHARS`` characters are parsed (final answers come
  last), which bounds the cost of Math-Verify's regexes on long garbage.
- Results are memoised on ``(response, gold)`` in an LRU cache: a small policy
  repeats the same outputs thousands of times during RL.

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
import decimal
import functools
import json
import logging
import os
import queue
import re
import select
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, cast

from areal_env.errors import RewardError

logger = logging.getLogger(__name__)

MAX_RESPONSE_CHARS = 4096
"""Only this many trailing characters of a response are parsed."""

DEFAULT_TIMEOUT_S = 5.0
"""Seconds one uncached check may take before it scores 0.0."""

STARTUP_TIMEOUT_S = 120.0
"""Seconds a verifier process may take to import Math-Verify and say it is ready."""

NUM_WORKERS = min(4, os.cpu_count() or 1)
"""Verifier processes at most; each starts only when concurrent calls need it."""

CACHE_SIZE = 1 << 16
"""Entries kept by the ``(response, gold)`` LRU cache."""

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


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
    hand the misses to a thread running :func:`math_reward`.

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

    Cached on ``(response, gold)``; bad input scores 0.0. Blocks for up to
    ``DEFAULT_TIMEOUT_S`` on a miss, so call it via ``asyncio.to_thread`` from
    async code.

    Args:
        response: the model's text; its final answer is extracted by Math-Verify.
        gold: the reference answer, e.g. ``"72"`` or ``"\frac{1}{2}"``.

    Returns:
        1.0 or 0.0.

    Raises:
        RewardError: only when no verifier process can start (e.g. math-verify
            is not installed): that must not read as a zero reward.

    Example:
        >>> math_reward("85.0", "85"), math_reward("garbage ]]{", "85")
        (1.0, 0.0)
    """
    instant = instant_math_reward(response, gold)
    if instant is not None:
        return instant
    try:
        return _cached_reward(response, gold)
    except RewardError:
        raise
    except Exception:
        logger.warning("math_reward failed; scoring 0.0", exc_info=True)
        return 0.0


@functools.lru_cache(maxsize=CACHE_SIZE)
def _cached_reward(response: str, gold: str) -> float:
    return 1.0 if verify_answer(response, gold) else 0.0


def verify_answer(response: str, gold: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Uncached, time-limited check that ``response`` answers ``gold``; thread-safe.

    Args:
        response: the model's text (only its last ``MAX_RESPONSE_CHARS`` are parsed).
        gold: the reference answer.
        timeout_s: how long the check may run before it counts as False.

    Returns:
        True when Math-Verify finds the answers equivalent within ``timeout_s``.

    Raises:
        RewardError: no verifier process can start.
    """
    response = response[-MAX_RESPONSE_CHARS:]
    verdict = _get_pool().check(response, gold, timeout_s)
    if verdict is None:
        logger.warning(
            "math-verify did not answer within %.1fs on a %d-char response "
            "(timeout or crash); scoring 0.0 and restarting its process",
            timeout_s,
            len(response),
        )
    return verdict is True


def _verify_unguarded(response: str, gold: str) -> bool:
    import math_verify

    gold_parsed = math_verify.parse(gold, parsing_timeout=None)
    if not gold_parsed:
        return False
    parsed = math_verify.parse(response, parsing_timeout=None)
    return bool(parsed) and bool(math_verify.verify(gold_parsed, parsed, timeout_seconds=None))


class _Worker:
    """One verifier subprocess, started on first use and after a timeout or crash."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    def check(self, response: str, gold: str, timeout_s: float) -> bool | None:
        """The verdict, or None when the process timed out or died (it is then killed)."""
        proc = self._started()
        try:
            stdin, stdout = cast(IO[bytes], proc.stdin), cast(IO[bytes], proc.stdout)
            stdin.write(json.dumps([response, gold]).encode() + b"\n")
            stdin.flush()
            line = _read_line(stdout, timeout_s)
        except OSError:
            line = b""
        if line in (b"true\n", b"false\n"):
            return line == b"true\n"
        self.kill()
        return None

    def _started(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        # cwd is the package root: `python -m` puts cwd first on sys.path, and
        # from inside areal_env/rewards/ `import math_verify` would find this file.
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(_PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        command = [sys.executable, "-m", __name__]
        try:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                cwd=_PACKAGE_ROOT,
                env=env,
            )
        except OSError as e:
            raise RewardError(f"cannot start the math-verify worker {command}: {e}") from e
        if _read_line(cast(IO[bytes], self._proc.stdout), STARTUP_TIMEOUT_S) != b"ready\n":
            try:  # EOF: the worker died; reap it so its exit code is known
                exit_code: int | None = self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                exit_code = None
            self.kill()
            raise RewardError(
                f"the math-verify worker {command} did not start (exit code {exit_code}, "
                f"waited up to {STARTUP_TIMEOUT_S:.0f}s); is math-verify installed?"
            )
        return self._proc

    def kill(self) -> None:
        """Stop the process now; the next check starts a new one."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()


def _read_line(stream: IO[bytes], timeout_s: float) -> bytes:
    # One request is in flight per process, so after select() the whole reply
    # line is either there or on its way; b"" means timeout or EOF.
    ready, _, _ = select.select([stream], [], [], timeout_s)
    return stream.readline() if ready else b""


class _WorkerPool:
    """Lends workers to threads, most recently used first so idle ones stay cold."""

    def __init__(self, size: int) -> None:
        self.pid = os.getpid()
        self._workers = [_Worker() for _ in range(size)]
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        for worker in self._workers:
            self._idle.put(worker)

    def check(self, response: str, gold: str, timeout_s: float) -> bool | None:
        """Run one check on an idle worker, waiting for one if all are busy."""
        worker = self._idle.get()
        try:
            return worker.check(response, gold, timeout_s)
        finally:
            self._idle.put(worker)

    def close(self) -> None:
        """Kill every worker process."""
        for worker in self._workers:
            worker.kill()


_pool: _WorkerPool | None = None
_pool_lock = threading.Lock()


def _get_pool() -> _WorkerPool:
    global _pool
    with _pool_lock:
        # A forked child must not share its parent's pipes.
        if _pool is None or _pool.pid != os.getpid():
            _pool = _WorkerPool(NUM_WORKERS)
            atexit.register(_pool.close)
        return _pool


def _serve() -> None:
    """Verifier process loop: ``[response, gold]`` JSON lines in, ``true``/``false`` out."""
    import math_verify  # noqa: F401  (import before "ready" so checks are fast)

    logging.disable(logging.CRITICAL)
    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    for line in sys.stdin.buffer:
        try:
            response, gold = json.loads(line)
            ok = _verify_unguarded(response, gold)
        except Exception:
            ok = False
        out.write(b"true\n" if ok else b"false\n")
        out.flush()


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
    "extract_gsm8k_answer",
    "math_reward",
    "verify_answer",
]


if __name__ == "__main__":
    _serve()
