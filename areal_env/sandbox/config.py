"""``SandboxConfig``: what a sandbox may use; ``SandboxResult``: what one program did.

Both are plain data: the config is validated once at construction, so a bad
value fails at start-up naming its key, and a result describes whatever the
code did (crashed, hung, flooded its output, was killed) without raising.

Example:
    >>> SandboxConfig(timeout_s=2.0, memory_mb=256).pool_size
    4
    >>> SandboxConfig(max_processes=0)
    Traceback (most recent call last):
    ...
    ValueError: sandbox.max_processes must be >= 1, got 0
    >>> print(SandboxResult(stdout="4", exit_code=0).to_text())
    4
    >>> print(SandboxResult(stdout="xxxxx", truncated=True, killed_reason="output",
    ...                     max_output_bytes=5).to_text())
    xxxxx
    [output truncated at 5 bytes; the program was stopped]
"""

from __future__ import annotations

from dataclasses import dataclass, field

KILLED_REASONS = ("timeout", "output", "cpu", "memory", "signal")
"""Values of ``SandboxResult.killed_reason`` besides None (the program ended by itself):
the host's wall-clock limit, the output limit, RLIMIT_CPU, the memory cgroup's OOM
killer, or another signal (e.g. the program killed its own sandbox)."""


@dataclass(kw_only=True, slots=True)
class SandboxConfig:
    """Limits and isolation of every call; one config serves a whole pool.

    The defaults suit a tool call of a math or coding env: a few seconds of
    compute, a few hundred MB, small output. A limit the host cannot enforce
    makes the sandbox refuse to start unless ``allow_weaker_limits`` is set (see
    ``docs/sandbox.md``).
    """

    timeout_s: float = 10.0
    """Wall-clock limit of one call, from sending the code to its exit; then all is killed."""
    cpu_s: int = 10
    """CPU seconds of each process (RLIMIT_CPU): SIGXCPU at the limit, SIGKILL 1 s later."""
    memory_mb: int = 512
    """Address space of each process (RLIMIT_AS: a MemoryError in Python) and, where the
    memory cgroup is writable, the memory of the whole sandbox (then the kernel kills)."""
    max_processes: int = 16
    """Processes the program may have at once, itself included (cgroup ``pids.max``)."""
    max_output_bytes: int = 64 * 1024
    """Bytes kept of stdout and of stderr each; one byte more and the program is killed."""
    max_file_mb: int = 64
    """Largest file the program may write (RLIMIT_FSIZE); writing past it raises OSError."""
    pool_size: int = 4
    """Sandboxes kept started, each waiting for one program; 0 starts one per call."""
    site_packages: bool = False
    """Let the program import the interpreter's installed packages (numpy, sympy...);
    off, it sees the standard library only."""
    python: str = ""
    """Interpreter to run the program with; empty: the one running this process."""
    bwrap: str = "bwrap"
    """The bubblewrap executable: a name looked up on PATH, or a path."""
    ro_paths: list[str] = field(default_factory=list)
    """Extra host paths the program may read (at the same path inside), e.g. a data folder."""
    scratch_root: str = ""
    """Where the per-call scratch folders are made; empty: the system's temporary folder."""
    allow_weaker_limits: bool = False
    """Run even where the process limit cannot be enforced (no writable pids cgroup: the
    process count is then bounded only by the wall-clock limit); logged as a warning."""
    allow_unsandboxed: bool = False
    """Where bubblewrap is missing or cannot make namespaces, run model code in a plain
    subprocess with the limits above but NO isolation: it can read your files, use the
    network and signal your processes. Logged as a warning at construction."""

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"sandbox.timeout_s must be > 0, got {self.timeout_s}")
        for key in ("cpu_s", "max_processes", "max_file_mb", "max_output_bytes"):
            if getattr(self, key) < 1:
                raise ValueError(f"sandbox.{key} must be >= 1, got {getattr(self, key)}")
        if self.memory_mb < 64:
            raise ValueError(
                "sandbox.memory_mb must be >= 64 (the interpreter alone maps ~20 MB), "
                f"got {self.memory_mb}"
            )
        if self.pool_size < 0:
            raise ValueError(f"sandbox.pool_size must be >= 0, got {self.pool_size}")
        for path in self.ro_paths:
            if not path.startswith("/"):
                raise ValueError(f"sandbox.ro_paths must hold absolute paths, got {path!r}")


@dataclass(kw_only=True, slots=True)
class SandboxResult:
    """What one program did. Model code that fails is described here, never raised.

    ``exit_code`` follows the shell: the program's status, or 128+N when signal N
    killed it (137: SIGKILL, 152: SIGXCPU); None when the host stopped it
    (``killed_reason`` "timeout" or "output").
    """

    stdout: str = ""
    """Standard output, at most ``max_output_bytes`` of it (UTF-8, bad bytes replaced)."""
    stderr: str = ""
    """Standard error (tracebacks), bounded the same way."""
    exit_code: int | None = None
    """Exit status; see the class docstring."""
    timed_out: bool = False
    """The wall-clock limit was reached and the sandbox was killed."""
    truncated: bool = False
    """stdout or stderr passed ``max_output_bytes``; the rest was not read."""
    killed_reason: str | None = None
    """Why the program did not end by itself: one of ``KILLED_REASONS``, or None."""
    duration_s: float = 0.0
    """Wall-clock seconds from sending the code to the end of the call."""
    sandboxed: bool = True
    """False only for the opt-in unsandboxed executor."""
    max_output_bytes: int = 0
    """The output limit that applied, for the truncation note."""

    @property
    def ok(self) -> bool:
        """The program ran to its end and exited with status 0."""
        return self.exit_code == 0 and self.killed_reason is None

    def to_text(self) -> str:
        """The result as a tool's reply: stdout, then stderr, then a note on any limit hit."""
        text = "\n".join(s.rstrip("\n") for s in (self.stdout, self.stderr) if s)
        note = {
            "output": f"[output truncated at {self.max_output_bytes} bytes; "
            "the program was stopped]",
            "timeout": f"[timed out after {self.duration_s:.1f} s; the program was stopped]",
            "cpu": "[killed: CPU time limit]",
            "memory": "[killed: memory limit]",
        }.get(self.killed_reason or "")
        if note is None and self.exit_code not in (None, 0):
            note = f"[exit code {self.exit_code}]"
        return "\n".join(s for s in (text, note) if s) or "[no output]"


__all__ = ["KILLED_REASONS", "SandboxConfig", "SandboxResult"]
