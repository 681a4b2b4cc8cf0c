"""Record and replay of model calls made by the environment (user simulator, judge).

An episode against an LLM user is only reproducible when the user's answers
are: a sampled model gives other answers on every run, and a test or an eval
must not need a model server at all. So every such call can go through a
:class:`CallCache`, a JSONL file of ``{"kind", "task_id", "turn", "hash",
"response"}`` lines:

- ``kind`` names the caller (``"user"`` for the simulated user; an
  NL-assertion judge uses ``"nl_judge"``), so one file can hold both and
  their keys never collide;
- ``turn`` is the caller's call index within the episode, and ``hash`` the
  sha256 of the request (the whole prompt: system message, conversation so
  far, tool schemas) as canonical JSON; a changed prompt, guideline or agent
  message is a different key rather than a stale answer.

Modes: ``record`` always calls the model and appends; ``replay`` never calls it
and a miss raises :class:`CacheMiss` naming the key (a silent fallback would
hide that the run is no longer the recorded one); ``auto`` replays what is
there and records the rest. When a file holds one key twice (two ``record``
runs), the last line wins. Lines are appended one whole ``write`` each and the
file is read once, when the cache is made: share one cache per file in a
process (``Tau2Env`` does, through its resources) rather than opening it twice.

Example:
    >>> import asyncio, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "calls.jsonl"
    >>> async def model() -> dict:
    ...     return {"content": "hi"}
    >>> asyncio.run(CallCache(path, "record").call("user", "t1", 0, {"m": 1}, model))
    {'content': 'hi'}
    >>> async def down() -> dict:
    ...     raise RuntimeError("no model in replay")
    >>> asyncio.run(CallCache(path, "replay").call("user", "t1", 0, {"m": 1}, down))
    {'content': 'hi'}
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, cast

CacheMode = Literal["record", "replay", "auto"]
CACHE_MODES: tuple[CacheMode, ...] = ("record", "replay", "auto")

CacheKey = tuple[str, str, int, str]
"""(kind, task id, turn, request hash)."""


class CacheMiss(LookupError):
    """A ``replay`` cache has no answer for a call; the message names the key."""


def request_hash(request: Any) -> str:
    """sha256 of ``request`` as canonical JSON (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CallCache:
    """A JSONL file of recorded model calls, looked up by :data:`CacheKey`.

    Args:
        path: the JSONL file; created (with its folder) on the first record.
        mode: ``record``, ``replay`` or ``auto`` (see the module docstring).

    Raises:
        ValueError: for an unknown mode, or a line of the file that is not a record.
        FileNotFoundError: in ``replay`` mode when the file does not exist.
    """

    def __init__(self, path: str | Path, mode: str = "auto") -> None:
        if mode not in CACHE_MODES:
            raise ValueError(f"user_cache_mode must be one of {list(CACHE_MODES)}, got {mode!r}")
        self.path = Path(path).expanduser()
        self.mode: CacheMode = cast(CacheMode, mode)
        self._entries: dict[CacheKey, Any] = {}
        if self.path.exists():
            self._load()
        elif self.mode == "replay":
            raise FileNotFoundError(f"replay cache {self.path} does not exist (record it first)")

    def __len__(self) -> int:
        """Distinct keys held."""
        return len(self._entries)

    def _load(self) -> None:
        with self.path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                    key = (str(r["kind"]), str(r["task_id"]), int(r["turn"]), str(r["hash"]))
                    self._entries[key] = r["response"]
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{self.path}:{n} is not a cache record: {e}") from e

    async def call(
        self,
        kind: str,
        task_id: str,
        turn: int,
        request: Any,
        model: Callable[[], Awaitable[Any]],
    ) -> Any:
        """The recorded response for this call, or ``await model()`` (recorded), per mode.

        ``request`` is everything the response depends on (JSON-serialisable);
        the response must be JSON-serialisable too.

        Raises:
            CacheMiss: in ``replay`` mode when the key is absent.
        """
        key: CacheKey = (kind, task_id, turn, request_hash(request))
        if self.mode != "record" and key in self._entries:
            return copy.deepcopy(self._entries[key])  # callers may edit what they get
        if self.mode == "replay":
            raise CacheMiss(self._miss_text(key))
        response = await model()
        self._append(key, response)
        return response

    def _append(self, key: CacheKey, response: Any) -> None:
        kind, task_id, turn, digest = key
        record = {"kind": kind, "task_id": task_id, "turn": turn, "hash": digest}
        line = json.dumps({**record, "response": response}, ensure_ascii=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
        self._entries[key] = response

    def _miss_text(self, key: CacheKey) -> str:
        kind, task_id, turn, digest = key
        same_turn = [k[3][:12] for k in self._entries if k[:3] == key[:3]]
        hint = (
            f"that turn was recorded with other conversations (hashes {same_turn}): the "
            "prompt or an earlier message differs from the recorded run"
            if same_turn
            else "nothing was recorded for that task and turn"
        )
        return (
            f"replay cache {self.path} has no {kind!r} call for task {task_id!r} turn {turn} "
            f"hash {digest}; {hint}"
        )


__all__ = ["CACHE_MODES", "CacheKey", "CacheMiss", "CacheMode", "CallCache", "request_hash"]
