"""The README's example runs, and docs/config.md matches the config dataclasses."""

from __future__ import annotations

import re
from pathlib import Path

from areal_env.config_reference import config_rows, render_reference
from areal_env.trainers.config import GRPOConfig

REPO = Path(__file__).resolve().parent.parent


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL)
    assert blocks, "README has no python example"
    namespace: dict = {}
    for block in blocks:  # later examples may use names of earlier ones
        exec(compile(block, "README.md", "exec"), namespace)


def test_config_reference_is_up_to_date():
    want = render_reference(GRPOConfig, "Config reference: trainers/grpo.py")
    assert (REPO / "docs" / "config.md").read_text() == want, (
        "regenerate with: python -m areal_env.trainers.config > docs/config.md"
    )


def test_every_config_key_is_documented():
    undocumented = [key for key, _, _, doc in config_rows(GRPOConfig) if not doc]
    assert not undocumented, undocumented


def test_reference_shows_the_defaults_the_trainer_runs_with():
    rows = {key: default for key, _, default, _ in config_rows(GRPOConfig)}
    cfg = GRPOConfig()
    assert rows["train.steps"] == repr(cfg.train.steps)
    assert rows["train.lr"] == repr(cfg.train.lr)
    assert rows["inference.sampling.max_new_tokens"] == repr(cfg.inference.sampling.max_new_tokens)
    assert rows["algorithm.kl_coef"] == repr(cfg.algorithm.kl_coef)
