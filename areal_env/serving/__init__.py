"""An OpenAI-compatible HTTP server over our engines, with one session per episode.

Agents that only take a ``base_url`` and an API key (a program using the
official ``openai`` client, a framework's OpenAI model class) are served here,
and trained: each episode opens a :class:`Session` whose calls are recorded into
that episode's Trajectory by the same chat client our own agents use. See
``docs/serving.md``; ``python -m areal_env.serve`` serves a model on its own.

Example:
    >>> import asyncio
    >>> from openai import AsyncOpenAI
    >>> from areal_env.inference.chat_client import ChatClient
    >>> from areal_env.testing import ScriptedEngine, char_tokenizer
    >>> async def episode():
    ...     tok = char_tokenizer()
    ...     engine = ScriptedEngine(replies=[tok.encode("4")])
    ...     async with OpenAIServer(ChatClient(engine, tok)) as server:
    ...         session = server.sessions.open()
    ...         agent = AsyncOpenAI(base_url=session.base_url, api_key=session.api_key)
    ...         reply = await agent.chat.completions.create(
    ...             model="policy", messages=[{"role": "user", "content": "2+2"}])
    ...         await agent.close()
    ...         trajectory = await session.close()
    ...     return reply.choices[0].message.content, trajectory.num_generated
    >>> asyncio.run(episode())
    ('4', 2)
"""

from areal_env.serving.errors import APIError
from areal_env.serving.server import OpenAIServer
from areal_env.serving.sessions import Session, SessionManager

__all__ = ["APIError", "OpenAIServer", "Session", "SessionManager"]
