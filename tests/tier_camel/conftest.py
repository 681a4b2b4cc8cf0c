"""The CAMEL adapter's tests run in their own virtual environment (``.venv-camel``).

The folder is not called ``tests/camel``: pytest puts ``tests/`` on ``sys.path``,
and a ``camel`` folder there would shadow (as a namespace package) the real one. Its
name also sorts after ``tests/conftest.py``: with ``--doctest-modules`` pytest imports
every conftest as a module named ``conftest``, and the first one imported wins.

camel-ai cannot share a pip environment with openai-agents (see docs/camel.md),
so the main suite cannot import it: there every test here is skipped, and
``.ci/run``'s CAMEL tier runs this folder in ``.venv-camel`` with
``AREAL_REQUIRE_CAMEL=1``, under which a missing camel fails collection instead
of skipping everything silently.
"""

from __future__ import annotations

import importlib.util
import os

if importlib.util.find_spec("camel") is None and os.environ.get("AREAL_REQUIRE_CAMEL"):
    raise ImportError(
        "AREAL_REQUIRE_CAMEL is set but camel-ai is not importable: run these tests in "
        ".venv-camel (see docs/camel.md)"
    )
