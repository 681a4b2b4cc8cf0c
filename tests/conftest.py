"""Shared fixtures: the offline tiny model and the shared data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the clone (CI has it there); tests fail loudly without it."""
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


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
