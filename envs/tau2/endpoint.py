"""The model behind tau2's LLM user and NL judge: a given client, or an endpoint's.

Both callers take either an OpenAI-shaped client (``ChatClient.untracked()``,
an ``AsyncOpenAI``) or an endpoint (``base_url``, ``model``, ``api_key``). The
endpoint's ``AsyncOpenAI`` is made on first use, so on the event loop that uses
it, and closed by its maker; a given client belongs to whoever gave it.
"""

from __future__ import annotations

import os
from typing import Any


class EndpointClientMixin:
    """``_client()`` and ``aclose()`` over ``client``/``base_url``/``model``/``api_key``."""

    client: Any
    base_url: str | None
    model: str | None
    api_key: str | None
    _owns_client: bool
    endpoint_role = "LLM"
    """How the missing-model error names the caller."""

    def _client(self) -> Any:
        """The client, making the endpoint's ``AsyncOpenAI`` on first use (on this loop)."""
        if self.client is None:
            if self.model is None:
                role = self.endpoint_role
                raise RuntimeError(f"no {role} model is configured (replay-only {role})")
            from openai import AsyncOpenAI

            key = self.api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
            self.client = AsyncOpenAI(base_url=self.base_url, api_key=key)
            self._owns_client = True
        return self.client

    async def aclose(self) -> None:
        """Close the ``AsyncOpenAI`` made here (a given client is its owner's)."""
        if self._owns_client and self.client is not None:
            await self.client.close()
            self.client, self._owns_client = None, False
