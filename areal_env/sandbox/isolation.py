"""What the sandboxed program sees: the bubblewrap command line and the bootstrap it runs.

The sandbox's filesystem is built from nothing: bubblewrap starts from an empty
root and we bind, read-only, only what the interpreter needs: the interpreter
binary, its standard library, the folders of the system shared libraries they
link against (found with ``ldd``, e.g. ``/usr/lib/x86_64-linux-gnu``) and the
symlinks on the way to them, so that ``/lib64/ld-linux-x86-64.so.2`` resolves
as on the host. Site-packages are hidden unless asked for. Binding all of ``/``
read-only would still let model code *read* every host file (keys, the project,
``/etc/shadow``), which is why the view is narrow.

Inside, the bootstrap (``BOOTSTRAP``) sets the resource limits, writes one
ready byte, then waits on stdin for ``<16-digit length><code>``; whatever
follows the code is the program's own stdin. That is what lets a pool start
sandboxes before the code exists.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

SCRATCH = "/scratch"
"""The program's working folder inside the sandbox (the host's per-call scratch folder)."""

HEADER_DIGITS = 16
"""The code's length is sent as this many ASCII digits before the code."""

READY = b"R"
"""The byte the bootstrap writes once the interpreter is up and limited."""

# Runs as `python -c BOOTSTRAP cpu_s memory_bytes fsize_bytes` in __main__. It
# reads the code with os.read so that sys.stdin (not yet used, its buffer empty)
# hands the rest of the pipe to the program. The program runs in __main__'s own
# namespace (pickle and multiprocessing find its functions), without the
# bootstrap's frame in tracebacks.
BOOTSTRAP = """\
import sys
def _areal_boot():
    import os, resource
    cpu, mem, fsize = (int(a) for a in sys.argv[1:4])
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    os.write(1, b"R")
    def read(n):
        buf = b""
        while len(buf) < n:
            chunk = os.read(0, n - len(buf))
            if not chunk:
                os._exit(0)
            buf += chunk
        return buf
    src = read(int(read(@HEADER_DIGITS@))).decode("utf-8", "replace")
    sys.argv = ["<code>"]
    del globals()["_areal_boot"]
    try:
        exec(compile(src, "<code>", "exec"), globals())
    except SystemExit:
        raise
    except BaseException as e:
        import linecache, traceback
        linecache.cache["<code>"] = (len(src), None, src.splitlines(True), "<code>")
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        sys.exit(1)
_areal_boot()
""".replace("@HEADER_DIGITS@", str(HEADER_DIGITS))

_QUERY = """\
import json, site, sys, sysconfig
paths = sysconfig.get_paths()
print(json.dumps({
    "executable": sys.executable,
    "prefix": sys.prefix,
    "dirs": sorted({paths["stdlib"], paths["platstdlib"], sysconfig.get_config_var("DESTSHARED")}),
    "site": sorted({paths["purelib"], paths["platlib"], *site.getsitepackages()}),
    "dynload": sysconfig.get_config_var("DESTSHARED"),
}))
"""

_SYSTEM_LIB_DIRS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib")


@dataclass(kw_only=True, slots=True)
class Layout:
    """The read-only view of the host a sandbox gets, and how to start Python in it."""

    python: str
    """The interpreter path to execute (the same path inside and outside)."""
    python_flags: list[str]
    """-I (isolated: no PYTHON* variables, no user site), -B, -u, UTF-8, -S without packages."""
    dirs: list[str] = field(default_factory=list)
    """Host folders bound read-only at their real path."""
    files: list[str] = field(default_factory=list)
    """Host files bound read-only at their real path."""
    symlinks: dict[str, str] = field(default_factory=dict)
    """Symlink path -> target, recreated inside so the host's paths resolve."""
    hidden: list[str] = field(default_factory=list)
    """Folders inside bound ones covered by an empty read-only tmpfs (site-packages)."""

    def bwrap_args(self) -> list[str]:
        """The bubblewrap options that build this view."""
        args: list[str] = []
        for path in self.dirs:
            args += ["--ro-bind", path, path]
        for path in self.files:
            args += ["--ro-bind", path, path]
        for link, target in self.symlinks.items():
            args += ["--symlink", target, link]
        for path in self.hidden:
            args += ["--tmpfs", path, "--remount-ro", path]
        return args


def python_info(python: str) -> dict:
    """Where ``python`` keeps its standard library and packages (it is run once to ask)."""
    return dict(_python_info(python))


@functools.cache
def _python_info(python: str) -> tuple[tuple[str, object], ...]:
    out = subprocess.run(
        [python, "-I", "-c", _QUERY], capture_output=True, text=True, timeout=60, env={}
    )
    if out.returncode != 0:
        raise OSError(f"cannot run the interpreter {python!r}: {out.stderr.strip()[-500:]}")
    return tuple(json.loads(out.stdout).items())


@functools.cache
def linked_libraries(files: tuple[str, ...]) -> tuple[str, ...] | None:
    """Shared libraries (and the dynamic loader) ``files`` link against; None without ldd."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return None
    # ldd prints "name => /path (addr)", "/lib64/ld-linux... (addr)" and a "file:"
    # header per argument when given several files.
    out = subprocess.run([ldd, *files], capture_output=True, text=True, timeout=120, env={})
    found = set()
    for line in out.stdout.splitlines():
        line = line.strip()
        if line.endswith(":"):
            continue
        path = (line.split("=>", 1)[1] if "=>" in line else line).split("(")[0].strip()
        if path.startswith("/") and os.path.exists(path):
            found.add(path)
    return tuple(sorted(found))


def _resolve(path: str, links: dict[str, str], depth: int = 0) -> str:
    """The real path of ``path``, recording every symlink met on the way in ``links``."""
    if depth > 40:  # as the kernel's ELOOP
        raise OSError(f"too many levels of symlinks resolving {path!r}")
    current = "/"
    for part in [p for p in path.split("/") if p]:
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            target = os.readlink(candidate)
            links[candidate] = target
            current = _resolve(os.path.normpath(os.path.join(current, target)), links, depth + 1)
        else:
            current = os.path.normpath(candidate)
    return current


def _under(path: str, folders: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in folders)


def build_layout(python: str, *, site_packages: bool, ro_paths: tuple[str, ...] = ()) -> Layout:
    """The narrowest view of the host in which ``python`` runs (see the module docstring).

    Raises:
        OSError: when the interpreter cannot be run or a path cannot be resolved.
    """
    info = python_info(python)
    executable = str(info["executable"])
    flags = ["-I", "-B", "-u", "-X", "utf8"] + ([] if site_packages else ["-S"])
    links: dict[str, str] = {}
    # With packages, start the interpreter by its own path: a venv's python finds
    # its pyvenv.cfg (and so its site-packages) next to itself.
    run_path = executable if site_packages else os.path.realpath(executable)
    real_exe = _resolve(run_path, links)

    folders = [str(d) for d in info["dirs"]]  # type: ignore[attr-defined]
    site_dirs = [s for s in info["site"] if os.path.isdir(s)]  # type: ignore[attr-defined]
    if site_packages:
        folders += [str(info["prefix"]), *site_dirs]
    folders += list(ro_paths)
    dynload = str(info["dynload"])
    extensions = tuple(
        os.path.join(dynload, f) for f in sorted(os.listdir(dynload)) if f.endswith(".so")
    )
    libs = linked_libraries((real_exe, *extensions))
    if libs is None or site_packages:
        # Extensions of installed packages may link any system library; so may the
        # interpreter when ldd is missing to say which.
        if libs is None:
            logger.info("sandbox: ldd not found; binding the system library folders whole")
        folders += [d for d in _SYSTEM_LIB_DIRS if os.path.exists(d)]
    # A system library is bound with its folder (one mount for ~45 libraries: a
    # sandbox starts in ~25 ms instead of ~45); others (libpython) file by file.
    system_roots = [os.path.realpath(d) for d in _SYSTEM_LIB_DIRS if os.path.exists(d)]
    files = {real_exe}
    for lib in libs or ():
        real = _resolve(lib, links)
        if _under(os.path.dirname(real), system_roots):
            folders.append(os.path.dirname(real))
        else:
            files.add(real)
    real_dirs = sorted({_resolve(d, links) for d in folders if os.path.exists(d)}, key=len)
    top_dirs: list[str] = []
    for d in real_dirs:  # parents first, so a nested folder is covered by its parent
        if not _under(d, top_dirs):
            top_dirs.append(d)
    real_files = sorted(files)
    hidden: list[str] = []
    if not site_packages:
        hidden = [
            real
            for real in sorted({_resolve(s, links) for s in site_dirs})
            if _under(real, top_dirs)
        ]
    return Layout(
        python=run_path,
        python_flags=flags,
        dirs=top_dirs,
        files=[f for f in real_files if not _under(f, top_dirs)],
        symlinks={k: v for k, v in sorted(links.items()) if not _under(k, top_dirs)},
        hidden=hidden,
    )


def bwrap_argv(
    bwrap: str, layout: Layout, scratch: str, command: list[str], shm_bytes: int
) -> list[str]:
    """The full command that runs ``command`` (e.g. ``python_argv(...)``) in a fresh sandbox.

    Args:
        bwrap: path of the bubblewrap executable.
        layout: the read-only view of the host.
        scratch: host folder bound read-write at ``SCRATCH`` (``/tmp`` links to it).
        command: what to run inside.
        shm_bytes: size of the private ``/dev/shm`` tmpfs.
    """
    return [
        bwrap,
        "--unshare-all",  # user, pid, net (only a private loopback), ipc, uts, cgroup
        "--die-with-parent",
        "--new-session",  # no controlling terminal: no TIOCSTI keystroke injection
        *("--cap-drop", "ALL"),
        "--clearenv",
        *("--setenv", "PATH", "/usr/bin:/bin"),
        *("--setenv", "HOME", SCRATCH),
        *("--setenv", "TMPDIR", SCRATCH),
        *("--setenv", "LANG", "C.UTF-8"),
        *("--hostname", "sandbox"),
        *layout.bwrap_args(),
        *("--proc", "/proc"),
        *("--dev", "/dev"),
        *("--size", str(shm_bytes), "--tmpfs", "/dev/shm"),
        *("--bind", scratch, SCRATCH),
        *("--symlink", SCRATCH, "/tmp"),
        *("--remount-ro", "/dev"),
        *("--remount-ro", "/"),  # the empty root tmpfs: nothing but the scratch is writable
        *("--chdir", SCRATCH),
        "--",
        *command,
    ]


def python_argv(layout: Layout, limits: tuple[int, int, int]) -> list[str]:
    """The interpreter command running the bootstrap.

    Args:
        layout: gives the interpreter and its flags.
        limits: (CPU seconds, address-space bytes, file-size bytes) the bootstrap sets.
    """
    return [layout.python, *layout.python_flags, "-c", BOOTSTRAP, *map(str, limits)]


def find_bwrap(name: str) -> str | None:
    """The path of the bubblewrap executable ``name`` (a PATH name or a path), or None."""
    if os.sep in name:
        return name if os.path.isfile(name) and os.access(name, os.X_OK) else None
    return shutil.which(name)


def probe_bwrap(bwrap: str, layout: Layout) -> str | None:
    """Run a one-line program in a real sandbox; None when it works, else why not."""
    scratch = tempfile.mkdtemp(prefix="areal-sandbox-probe-")
    command = [layout.python, *layout.python_flags, "-c", "print('ok')"]
    try:
        out = subprocess.run(
            bwrap_argv(bwrap, layout, scratch, command, 1 << 20),
            capture_output=True,
            timeout=60,
            env={},
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"running {bwrap} failed: {e}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if out.returncode != 0 or out.stdout.strip() != b"ok":
        err = out.stderr.decode("utf-8", "replace").strip()[-500:]
        return f"{bwrap} could not start a sandbox (exit {out.returncode}): {err}"
    return None


@functools.cache
def bwrap_version(bwrap: str) -> str:
    """``bubblewrap X.Y.Z`` as the executable reports it, or "bubblewrap"."""
    try:
        out = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "bubblewrap"
    return out.stdout.strip() or "bubblewrap"


__all__ = [
    "BOOTSTRAP",
    "HEADER_DIGITS",
    "READY",
    "SCRATCH",
    "Layout",
    "build_layout",
    "bwrap_argv",
    "find_bwrap",
    "linked_libraries",
    "probe_bwrap",
    "python_argv",
    "python_info",
]
