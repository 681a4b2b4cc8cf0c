"""Run untrusted, model-written Python safely: bubblewrap isolation, limits, a warm pool.

Any env with a code tool builds on this package (``docs/sandbox.md`` has the
threat model, what is isolated, the limits and the measured costs)::

    async with Sandbox(SandboxConfig(timeout_s=5, memory_mb=256)) as sandbox:
        result = await sandbox.run("print(2 + 2)")
    result.ok, result.stdout.strip(), result.to_text()  # (True, '4', '4')

Modules: ``config`` (SandboxConfig, SandboxResult), ``sandbox`` (Sandbox, the
pool and the fail-closed checks), ``process`` (one sandbox's lifecycle),
``isolation`` (the bubblewrap command and the bootstrap), ``cgroups``
(process and memory limits).
"""

from areal_env.sandbox.config import KILLED_REASONS, SandboxConfig, SandboxResult
from areal_env.sandbox.process import SandboxError
from areal_env.sandbox.sandbox import INSTALL_HINT, Sandbox, SandboxUnavailableError

__all__ = [
    "INSTALL_HINT",
    "KILLED_REASONS",
    "Sandbox",
    "SandboxConfig",
    "SandboxError",
    "SandboxResult",
    "SandboxUnavailableError",
]
