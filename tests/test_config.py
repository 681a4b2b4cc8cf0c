from __future__ import annotations

import pytest

from areal_env.config import load_config
from areal_env.trainers.config import GRPOConfig


def test_defaults_load_and_dotted_overrides_apply():
    cfg = load_config(GRPOConfig, ["rollout.max_head_offpolicyness=2", "output_dir=/tmp/run"])
    assert cfg.rollout.max_head_offpolicyness == 2
    assert cfg.output_dir == "/tmp/run"
    assert cfg.algorithm.preset == "grpo"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("rollout.nonexistent=1", "rollout.nonexistent"),
        ("bogus=1", "bogus"),
        ("rollout.n_samples=many", "rollout.n_samples"),
        ("train.lr=fast", "train.lr"),
        ("model.tiny.hidden=3", "model.tiny.hidden"),
    ],
)
def test_unknown_keys_and_wrong_types_name_the_key(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_config(GRPOConfig, [override])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.dtype=int3", "model.dtype"),
        ("algorithm.preset=nope", "algorithm.preset"),
        ("train.backend=tpu", "train.backend"),
        ("rollout.n_samples=0", "rollout.n_samples"),
        ("train.steps=0", "train.steps"),
    ],
)
def test_bad_values_fail_at_start_up_naming_the_key(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_config(GRPOConfig, [override])


def test_yaml_file_then_overrides_then_resume(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("rollout:\n  n_samples: 4\ntrain:\n  steps: 7\n")
    cfg = load_config(GRPOConfig, ["--config", str(f), "train.steps=9", "--resume"])
    assert (cfg.rollout.n_samples, cfg.train.steps, cfg.recover) == (4, 9, True)


def test_missing_config_file_and_malformed_override():
    with pytest.raises(ValueError, match="not found"):
        load_config(GRPOConfig, ["--config", "/no/such.yaml"])
    with pytest.raises(ValueError, match="key.sub=value"):
        load_config(GRPOConfig, ["rollout.n_samples"])
