"""Any program as an agent: run a command per episode against the episode's session.

The program is a black box that speaks the OpenAI API. Per episode the adapter
resets the env, opens a session on the run's shared
:class:`~areal_env.serving.OpenAIServer` (one per run, kept in
``env.resources`` under ``"openai_server"``, so the run's registry stops it),
and starts the command with ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` set to the
session's. Every completion the program asks for is recorded into the
episode's trajectory, token in, token out.

The task goes to the program on stdin (``task_format="text"``: the last user
message; ``"json"``: the env's reset messages as a JSON list), or, with
``task_as_argument``, as the command's last argument. The program's answer is
the last non-empty line of its stdout; the env scores it (``env.astep`` with an
assistant message), unless the program posted its own reward to
``<OPENAI_BASE_URL>/reward``: then that reward is the episode's, and the env is
not asked.

A program that exits nonzero, outlives ``timeout_s`` (its whole process group
is killed) or never calls the model raises :class:`AgentProgramError`: the
rollout counts it as a failed episode, the run goes on.

Example (``examples/openai_client_agent.py`` uses only the official client)::

    agent:
      name: program
      kwargs:
        command: [python, examples/openai_client_agent.py]
        timeout_s: 60
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from areal_env.agents.base import finish_trajectory
from areal_env.errors import EpisodeError
from areal_env.inference.chat_client import EpisodeClient
from areal_env.serving import OpenAIServer
from areal_env.serving.sessions import Session
from areal_env.types import Trajectory

SERVER_KEY = "openai_server"
"""Key of the run's shared server in ``env.resources``."""

STDERR_TAIL_CHARS = 2000
"""How much of a failed program's stderr the error carries."""


class AgentProgramError(EpisodeError):
    """A wrapped agent (a program or a framework's runner) failed its episode.

    Raised when the program exits nonzero, runs past its timeout, never calls
    the model, or when the framework raises (max turns, a model error).
    """


async def open_session(env: Any, client: EpisodeClient) -> Session:
    """A session recording into ``client`` on the run's shared server (launched once).

    The server lives in ``env.resources``, so every episode of a run shares one
    listening socket and the run's registry stops it when the run ends.
    """
    server = await env.resources.aget(SERVER_KEY, lambda: OpenAIServer.launch(client.shared))
    return server.sessions.open(client)


def require_model_calls(session: Session, who: str) -> None:
    """Fail the episode when the agent never called the model: nothing to train on.

    Raises:
        AgentProgramError: when the session generated nothing.
    """
    if not session.trajectory.samples:
        raise AgentProgramError(f"{who} never called the model at {session.base_url}")


def last_user_text(messages: Sequence[dict[str, Any]]) -> str:
    """The content of the last user message (the task as a person would type it)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return str(message.get("content") or "")
    return ""


@dataclass(kw_only=True, slots=True)
class ProgramAdapter:
    """Plays each episode by running ``command`` (see the module docstring)."""

    command: list[str] | str = field(default_factory=list)
    """The command: an argv list, or a string split like a shell would (no shell runs)."""
    task_format: str = "text"
    """``text``: the last user message; ``json``: the reset messages as a JSON list."""
    task_as_argument: bool = False
    """Pass the task as the last argument instead of on stdin."""
    timeout_s: float = 120.0
    """Wall-clock limit per episode; past it the program's process group is killed."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables for the program (the session's two win)."""
    cwd: str | None = None
    """Working directory of the program; None: the run's."""

    def __post_init__(self) -> None:
        if isinstance(self.command, str):
            self.command = shlex.split(self.command)
        if not self.command:
            raise ValueError("agent.kwargs.command must name a program to run")
        if self.task_format not in ("text", "json"):
            raise ValueError(
                f"agent.kwargs.task_format must be 'text' or 'json', got {self.task_format!r}"
            )
        if self.timeout_s <= 0:
            raise ValueError(f"agent.kwargs.timeout_s must be > 0, got {self.timeout_s}")

    async def run(
        self,
        env: Any,
        client: EpisodeClient,
        *,
        seed: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> Trajectory:
        """Run the program once; score its answer with the env unless it posted a reward."""
        obs, info = await env.areset(seed=seed, options=options)
        messages = list(obs)
        task = json.dumps(messages) if self.task_format == "json" else last_user_text(messages)
        session = await open_session(env, client)
        try:
            stdout = await self._run_program(task, session.env_vars())
        finally:
            await session.close()
        require_model_calls(session, f"program {self.command[0]!r}")
        answer = _last_line(stdout)
        if session.reward is not None:
            reward, step_info = session.reward, dict(session.reward_info)
        else:
            action = {"role": "assistant", "content": answer}
            _, reward, _, _, step_info = await env.astep(action)
            messages.append(action)
        traj = finish_trajectory(client, reward, {**info, **step_info})
        traj.messages = messages
        traj.info["answer_text"] = answer
        return traj

    async def _run_program(self, task: str, session_env: dict[str, str]) -> str:
        """Run the command to its end; its stdout, or an AgentProgramError."""
        argv = [*self.command, task] if self.task_as_argument else list(self.command)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **self.env, **session_env},
            cwd=self.cwd,
            start_new_session=True,  # its own process group: a timeout kills its children too
        )
        stdin = None if self.task_as_argument else task.encode()
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), self.timeout_s)
        except TimeoutError:
            await _kill_group(proc)
            raise AgentProgramError(
                f"program {argv[0]!r} ran past {self.timeout_s}s and was killed"
            ) from None
        except BaseException:  # cancelled (the rollout's own timeout): leave no orphan
            await _kill_group(proc)
            raise
        if proc.returncode != 0:
            tail = err.decode(errors="replace")[-STDERR_TAIL_CHARS:]
            raise AgentProgramError(
                f"program {argv[0]!r} exited with code {proc.returncode}; stderr tail:\n{tail}"
            )
        return out.decode(errors="replace")


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the program's whole process group and reap it."""
    if proc.returncode is None:
        try:
            if sys.platform != "win32":
                os.killpg(proc.pid, signal.SIGKILL)
            else:  # pragma: no cover
                proc.kill()
        except ProcessLookupError:
            pass
    await proc.wait()


def _last_line(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


__all__ = [
    "SERVER_KEY",
    "AgentProgramError",
    "ProgramAdapter",
    "last_user_text",
    "open_session",
    "require_model_calls",
]
