"""Package discovery for the repository layout (the metadata lives in pyproject.toml).

``agents/``, ``envs/`` and ``trainers/`` sit at the repository root without an
``__init__.py`` (so the top-level name ``agents`` stays the OpenAI Agents SDK's)
and install as ``areal_env.agents`` / ``.envs`` / ``.trainers``. Static
``packages.find`` cannot express that mapping, so every subfolder is discovered
here: a new folder under one of them needs no edit of the build files.
"""

from setuptools import find_namespace_packages, find_packages, setup

MAPPED = ("agents", "envs", "trainers")


def _discover() -> tuple[list[str], dict[str, str]]:
    packages = find_packages(include=["areal_env", "areal_env.*"])
    package_dir = {}
    for folder in MAPPED:
        subs = find_namespace_packages(where=folder, exclude=["*__pycache__*"])
        for name in ["", *subs]:
            dotted = f"areal_env.{folder}" + (f".{name}" if name else "")
            packages.append(dotted)
            package_dir[dotted] = f"{folder}/{name.replace('.', '/')}".rstrip("/")
    return packages, package_dir


PACKAGES, PACKAGE_DIR = _discover()
setup(packages=PACKAGES, package_dir=PACKAGE_DIR)
