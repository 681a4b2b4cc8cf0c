"""AsyncEnv: a Gymnasium env whose native API is async and whose data is chat.

Environments in areal-env wait on things (a tool sandbox, a retriever, a user
simulator, a reward verifier), so ``areset``/``astep`` are coroutines and many
episodes share one event loop. The sync ``reset``/``step`` run those coroutines
with ``asyncio.run`` so that plain Gymnasium code and ``check_env`` work.

Subclasses implement two hooks and get the bookkeeping for free::

    async def _areset(self, options: dict) -> tuple[list[dict], dict]
    async def _astep(self, message: dict) -> tuple[list[dict], float, bool, bool, dict]

``areset`` seeds ``self.np_random`` (``gymnasium.Env.reset(seed=seed)``; never
global seeding) before calling ``_areset``. ``astep`` refuses to run before a
reset or after the episode ended (``gymnasium.error.ResetNeeded``), checks the
action against ``action_space`` and hands ``_astep`` a normalised assistant
message dict (a bare string becomes ``{"role": "assistant", "content": s}``).

Note:
    ``gym.make`` wraps envs, and Gymnasium wrappers only forward the sync API:
    reach the async one with ``env.unwrapped.areset(...)``. Each sync call runs
    in a fresh event loop, so objects bound to a loop (client sessions, locks)
    should be created inside the coroutines, not in ``__init__``.

Example:
    >>> class Echo(AsyncEnv):
    ...     async def _areset(self, options):
    ...         return [{"role": "user", "content": "say hi"}], {}
    ...     async def _astep(self, message):
    ...         return [], float(message["content"] == "hi"), True, False, {}
    >>> env = Echo()
    >>> env.reset(seed=0)[0]
    [{'role': 'user', 'content': 'say hi'}]
    >>> env.step("hi")[1:4]
    (1.0, True, False)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import gymnasium as gym
from gymnasium.error import InvalidAction, ResetNeeded

from areal_env.envs.spaces import ChatMessage, ChatMessages

Message = dict[str, Any]
"""An OpenAI-style chat message: ``{"role": ..., "content": ..., ...}``."""

Action = Message | str
"""What an agent passes to ``step``: the assistant message, or its text."""

StepResult = tuple[list[Message], float, bool, bool, dict[str, Any]]
"""``(obs, reward, terminated, truncated, info)`` as in Gymnasium."""

_T = TypeVar("_T")


def running_loop_exists() -> bool:
    """True when called from inside a running asyncio event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class AsyncEnv(gym.Env[list[Message], Action]):
    """Base class of every areal-env environment (see the module docstring).

    Attributes:
        observation_space: ``ChatMessages``: the new messages of a step.
        action_space: ``ChatMessage(roles=("assistant",), allow_str=True)``.
        num_steps: steps taken in the current episode.
    """

    def __init__(self) -> None:
        self.observation_space = ChatMessages()
        self.action_space = ChatMessage(roles=("assistant",), allow_str=True)
        self.num_steps = 0
        self._episode_over = True
        self._has_reset = False

    # ---- stop predicates -------------------------------------------------------------

    @property
    def episode_over(self) -> bool:
        """True before the first reset and after a step that terminated or truncated."""
        return self._episode_over

    @property
    def tools(self) -> list[dict[str, Any]]:
        """OpenAI function schemas of the tools this env executes; none by default."""
        return []

    # ---- native async API ------------------------------------------------------------

    async def areset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        """Start a new episode.

        Args:
            seed: reseeds ``self.np_random`` when given; otherwise its stream continues.
            options: env-specific reset options, passed to ``_areset`` (``{}`` when None).

        Returns:
            ``(obs, info)``: the episode's first messages and facts about the task.
        """
        gym.Env.reset(self, seed=seed)
        # Closed first: if _areset raises, the previous episode must not be steppable.
        self._episode_over = True
        obs, info = await self._areset(dict(options or {}))
        self.num_steps = 0
        self._episode_over = False
        self._has_reset = True
        return obs, info

    async def astep(self, action: Action) -> StepResult:
        """Apply the assistant's message and return what the env answers.

        Args:
            action: the assistant message dict, or its text as a plain string.

        Returns:
            ``(obs, reward, terminated, truncated, info)``; ``obs`` holds only new messages.

        Raises:
            gymnasium.error.ResetNeeded: before the first reset or after the episode ended.
            gymnasium.error.InvalidAction: when ``action`` is not in ``action_space``.
        """
        if self.episode_over:
            when = "after the episode ended" if self._has_reset else "before reset"
            raise ResetNeeded(f"{type(self).__name__}.step() called {when}; call (a)reset() first")
        if action not in self.action_space:
            raise InvalidAction(
                f"{type(self).__name__}: action must be an assistant message dict or a str "
                f"within {self.action_space}, got {_describe(action)}"
            )
        message = {"role": "assistant", "content": action} if isinstance(action, str) else action
        obs, reward, terminated, truncated, info = await self._astep(message)
        self.num_steps += 1
        self._episode_over = bool(terminated or truncated)
        return obs, float(reward), bool(terminated), bool(truncated), info

    async def aclose(self) -> None:
        """Release what the env holds (connections, sandboxes); safe to call twice."""

    # ---- hooks for subclasses --------------------------------------------------------

    async def _areset(self, options: dict[str, Any]) -> tuple[list[Message], dict[str, Any]]:
        """Build the first observation; ``self.np_random`` is already seeded."""
        raise NotImplementedError(f"{type(self).__name__} must implement _areset")

    async def _astep(self, message: Message) -> StepResult:
        """Answer one assistant message (already checked and normalised to a dict)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _astep")

    # ---- sync Gymnasium API ----------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[Message], dict[str, Any]]:
        """Sync form of :meth:`areset`; raises RuntimeError inside a running event loop."""
        return self._run_sync("reset", lambda: self.areset(seed=seed, options=options))

    def step(self, action: Action) -> StepResult:
        """Sync form of :meth:`astep`; raises RuntimeError inside a running event loop."""
        return self._run_sync("step", lambda: self.astep(action))

    def close(self) -> None:
        """Sync form of :meth:`aclose`; safe to call anywhere, even inside an event loop.

        Cleanup must never be skipped (Gymnasium wrappers and ``__del__`` call
        ``close()`` wherever they are), so inside a running loop the coroutine
        runs to completion on a short-lived thread with its own loop.
        """
        if not running_loop_exists():
            asyncio.run(self.aclose())
            return
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, self.aclose()).result()

    def _run_sync(self, name: str, make_coro: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        # The coroutine is created only after the check, so refusing leaves no
        # "coroutine was never awaited" warning behind.
        if running_loop_exists():
            raise RuntimeError(
                f"{type(self).__name__}.{name}() was called from inside a running event "
                f"loop; use `await env.a{name}(...)` there (via gym.make: "
                f"`await env.unwrapped.a{name}(...)`)"
            )
        return asyncio.run(make_coro())


def _describe(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 120 else text[:117] + "..."


__all__ = ["Action", "AsyncEnv", "Message", "StepResult", "running_loop_exists"]
