"""AsyncEnv: a Gymnasium env whose native API is async and whose data is chat.

Environments in areal-env wait on things (a tool sandbox, a retriever, a user
simulator, a reward verifier), so ``areset``/``astep`` are coroutines and many
episodes share one event loop. The sync ``reset``/``step`` run those coroutines
on an event loop of the env's own so that plain Gymnasium code and ``check_env``
work. What outlives an episode (an index, a client pool) comes from
``self.resources``, a :class:`~areal_env.resources.ResourceRegistry` that the
run owns (the process-wide default one when the env was made without a run).

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
    reach the async one with ``env.unwrapped.areset(...)``. The sync calls of one
    env all run on one event loop that the env owns (made on the first sync call,
    closed by ``close()``), so a client session, lock, task or subprocess opened
    in ``reset`` still works in ``step``, and ``close()`` runs ``aclose`` on that
    same loop, even when called inside a running loop (then from a short-lived
    thread, as a loop cannot block on its own coroutine). Objects bound to a
    loop work only on it: create them in the coroutines, not in ``__init__``,
    and drive one env through one API. An env used through the async API is
    closed with ``await env.aclose()`` on its loop; its sync ``close()`` runs
    ``aclose`` on a fresh loop.

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
    >>> env.close()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import gymnasium as gym
from gymnasium.error import InvalidAction, ResetNeeded

from areal_env.envs.spaces import ChatMessage, ChatMessages
from areal_env.resources import ResourceRegistry, default_registry
from areal_env.rollout.activity import phase

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

    def __init__(self, *, resources: ResourceRegistry | None = None) -> None:
        """Set the chat spaces and the episode state.

        Args:
            resources: where shared objects come from; None means the
                process-wide :func:`~areal_env.resources.default_registry`.
        """
        self.observation_space = ChatMessages()
        self.action_space = ChatMessage(roles=("assistant",), allow_str=True)
        self.num_steps = 0
        self._episode_over = True
        self._has_reset = False
        self._resources = resources
        self._runner: asyncio.Runner | None = None  # the sync API's loop, made lazily
        self._runner_finalizer: weakref.finalize | None = None

    @property
    def resources(self) -> ResourceRegistry:
        """Objects shared across envs and episodes (an index, a client pool).

        Resolved on each access when None was given, so an env outlives a
        default registry that was closed and replaced.
        """
        return self._resources if self._resources is not None else default_registry()

    # ---- stop predicates -------------------------------------------------------------

    @property
    def episode_over(self) -> bool:
        """True before the first reset and after a step that terminated or truncated."""
        return self._episode_over

    @property
    def tools(self) -> list[dict[str, Any]]:
        """OpenAI function schemas of the tools this env executes; none by default."""
        return []

    def demonstration(self) -> list[Message] | None:
        """The assistant messages of a gold episode of the current task, or None.

        Called after a reset, for supervised warm starts: the messages are played
        in order through the real agent and chat client (teacher forcing, see
        ``areal_env.rollout.demonstrations``), so tool calls run and tool results
        come back as in a rollout. None (the default) means the env has none of
        its own; a reset ``info["answer"]`` then serves as a one-message reply.
        """
        return None

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
        with phase("env reset", type(self).__name__):
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
        with phase("env step", type(self).__name__):
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

        ``aclose`` runs on the env's own loop when sync calls made one (what they
        opened is bound to it), then that loop is closed; otherwise on a fresh
        loop. Cleanup must never be skipped (Gymnasium wrappers call ``close()``
        wherever they are), so inside a running loop, which cannot block on a
        coroutine of its own, it runs to completion on a short-lived thread.
        Safe to call twice; a later sync call makes a new loop.
        """
        runner, self._runner = self._runner, None
        if runner is None:
            runner = _new_runner()
        elif self._runner_finalizer is not None:
            self._runner_finalizer.detach()

        def aclose_then_close_loop() -> None:
            try:
                runner.run(self.aclose())
            finally:
                runner.close()

        if not running_loop_exists():
            aclose_then_close_loop()
            return
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(aclose_then_close_loop).result()

    def _run_sync(self, name: str, make_coro: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        # The coroutine is created only after the check, so refusing leaves no
        # "coroutine was never awaited" warning behind.
        if running_loop_exists():
            raise RuntimeError(
                f"{type(self).__name__}.{name}() was called from inside a running event "
                f"loop; use `await env.a{name}(...)` there (via gym.make: "
                f"`await env.unwrapped.a{name}(...)`)"
            )
        if self._runner is None:
            self._runner = _new_runner()
            # An env dropped without close() still gives its loop back.
            self._runner_finalizer = weakref.finalize(self, _close_abandoned, self._runner)
        return self._runner.run(make_coro())


def _new_runner() -> asyncio.Runner:
    # With a loop_factory the Runner leaves the thread's current event loop alone.
    return asyncio.Runner(loop_factory=asyncio.new_event_loop)


def _close_abandoned(runner: asyncio.Runner) -> None:
    # aclose cannot run here (the env is gone); inside another running loop the
    # runner cannot run its loop to cancel tasks, so the loop is only closed.
    if running_loop_exists():
        runner.get_loop().close()
    else:
        runner.close()


def _describe(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 120 else text[:117] + "..."


__all__ = ["Action", "AsyncEnv", "Message", "StepResult", "running_loop_exists"]
