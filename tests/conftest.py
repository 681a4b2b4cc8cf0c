"""Shared fixtures: the offline tiny model, the shared data folder, a tiny GSM8K file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

TINY_GSM8K = [
    {
        "question": "Ann\u2019s hens lay 12 eggs a day. She eats 2 and sells the rest "
        "for $3 each. How many dollars does she make every day?",
        "answer": "She sells 12 - 2 = <<12-2=10>>10 eggs.\n"
        "She makes 10 * 3 = $<<10*3=30>>30 every day.\n#### 30",
    },
    {
        "question": "A shop sells 1,200 pens in May and twice as many in June. "
        "How many pens does it sell in the two months?",
        "answer": "In June it sells 1,200 * 2 = <<1200*2=2400>>2,400 pens.\n"
        "In all it sells 1,200 + 2,400 = <<1200+2400=3600>>3,600 pens.\n#### 3,600",
    },
    {
        "question": "It is 4 degrees at noon and 7 degrees colder at night. "
        "How warm is it at night?",
        "answer": "At night it is 4 - 7 = <<4-7=-3>>-3 degrees.\n#### -3",
    },
]
"""Invented problems in GSM8K's format, for the tests that must pass on a plain clone."""


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the clone, where the real data sets are.

    Without it the test is skipped (a plain clone has no such folder), unless the
    environment variable ``CI`` is set to a true value: CI must run these tests,
    so there the test fails.
    """
    if not SHARED_DATA.is_dir():
        message = f"shared data folder {SHARED_DATA} not found"
        if in_ci():
            pytest.fail(
                f"{message}, and CI is set: CI must run the tests on real data", pytrace=False
            )
        pytest.skip(f"{message}: tests on real data run where that folder exists")
    return SHARED_DATA


@pytest.fixture
def tiny_gsm8k(tmp_path: Path) -> Path:
    """``gsm8k/test.jsonl`` under ``tmp_path``, holding the records of ``TINY_GSM8K``."""
    path = tmp_path / "gsm8k" / "test.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in TINY_GSM8K), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2 model + tokenizer folder built offline once per test session."""
    from areal_env.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_model_and_tokenizer(tiny_model_dir: Path):
    """(model, tokenizer) loaded back through the Auto classes, in eval mode."""
    from areal_env.models.tiny import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(tiny_model_dir)
    model.eval()
    return model, tok


def in_ci() -> bool:
    """True when the ``CI`` environment variable is set to a true value."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


@pytest.fixture(scope="session")
def sandbox_available() -> None:
    """Skip (locally) or fail (with ``CI`` set) where a real sandbox cannot start.

    The same rule as ``shared_data``: a developer without bubblewrap can run the
    rest of the suite; CI installs it and must run these tests.
    """
    from areal_env.sandbox import Sandbox, SandboxConfig, SandboxUnavailableError

    try:
        Sandbox(SandboxConfig(pool_size=0))
    except SandboxUnavailableError as e:
        if in_ci():
            pytest.fail(f"{e}\nCI is set: the sandbox tests must run in CI", pytrace=False)
        pytest.skip(f"no sandbox on this machine: {e}")
