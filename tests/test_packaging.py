"""Packaging: our folders install as areal_env.*, and `import agents` stays the SDK's."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _is_sdk(module) -> bool:
    return hasattr(module, "Agent") and hasattr(module, "Runner")


def test_import_agents_in_pytest_is_the_openai_agents_sdk():
    import agents

    assert _is_sdk(agents), agents.__file__
    assert not Path(agents.__file__).resolve().is_relative_to(REPO / "agents")


def test_import_agents_from_repo_root_with_python_c_is_the_sdk():
    code = "import agents; print(agents.__file__); print(hasattr(agents, 'Runner'))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[1] == "True"
    # Not our agents/ folder (a virtual environment may live inside the clone, as .venv/).
    assert not Path(out[0]).resolve().is_relative_to(REPO / "agents")


def test_our_folders_are_subpackages_of_areal_env():
    from areal_env.agents.single_turn import SingleTurnAgent
    from areal_env.envs.base import AsyncEnv
    from areal_env.trainers.algorithms.presets import PRESETS

    assert SingleTurnAgent and AsyncEnv and PRESETS
    for folder in ("agents", "envs", "trainers"):
        assert not (REPO / folder / "__init__.py").exists(), f"{folder}/__init__.py shadows names"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


LAYERS = {
    # folder: packages it must not import
    "areal_env": ("areal_env.agents", "areal_env.envs", "areal_env.trainers"),
    "envs": ("areal_env.agents", "areal_env.trainers"),
    "agents": ("areal_env.trainers",),
}


ON_TOP = {
    # Modules inside areal_env/ that sit on top of every layer by design, so the
    # layer rules do not apply to them. testing.py: the test doubles, built on
    # envs.base and agents.base. eval.py: an entry point (python -m areal_env.eval)
    # that builds model, env and agent with areal_env.trainers.build, as
    # trainers/grpo.py does; it lives in the package so that `-m` finds it.
    # serve.py: an entry point too (python -m areal_env.serve).
    "areal_env/testing.py",
    "areal_env/eval.py",
    "areal_env/serve.py",
}
ENTRY_POINTS = ("areal_env.eval", "areal_env.serve")
"""Top of the stack: no library module may import them."""


def test_dependency_direction_is_one_way():
    bad = []
    for folder, forbidden in LAYERS.items():
        for path in (REPO / folder).rglob("*.py"):
            if path.relative_to(REPO).as_posix() in ON_TOP:
                continue
            for name in _imports(path):
                if name.startswith(forbidden):
                    bad.append(f"{path.relative_to(REPO)} imports {name}")
    assert not bad, bad


def test_nothing_in_the_library_imports_an_entry_point():
    bad = []
    for folder in (*LAYERS, "trainers"):
        for path in (REPO / folder).rglob("*.py"):
            bad += [
                f"{path.relative_to(REPO)} imports {name}"
                for name in _imports(path)
                if name in ENTRY_POINTS or name.startswith(tuple(f"{e}." for e in ENTRY_POINTS))
            ]
    assert not bad, bad
