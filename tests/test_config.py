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
        ("algorithm.kl_estimator=k9", "algorithm.kl_estimator"),
        ("algorithm.clip_low=1.5", "algorithm.clip_low"),
        ("algorithm.clip_high=-0.1", "algorithm.clip_high"),
        ("algorithm.kl_coef=-0.1", "algorithm.kl_coef"),
        ("inference.sampling.temperature=-1", "inference.sampling.temperature"),
        ("inference.sampling.max_new_tokens=0", "inference.sampling.max_new_tokens"),
        ("inference.sampling.top_p=0", "inference.sampling.top_p"),
        ("inference.backend=tgi", "inference.backend"),
        ("agent.name=nope", "agent.name"),
        ("rollout.n_samples=1", "rollout.n_samples"),  # GRPO compares a group's episodes
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


def test_a_group_of_one_is_fine_for_a_batch_estimator():
    cfg = load_config(GRPOConfig, ["rollout.n_samples=1", "algorithm.preset=reinforce_pp"])
    assert cfg.rollout.n_samples == 1


def test_the_preset_decides_unless_the_user_sets_the_key():
    assert load_config(GRPOConfig, []).algorithm.resolved().kl_coef == 0.1
    assert load_config(GRPOConfig, ["algorithm.preset=dapo"]).algorithm.resolved().kl_coef == 0.0
    cfg = load_config(GRPOConfig, ["algorithm.preset=dapo", "algorithm.kl_coef=0.02"])
    assert cfg.algorithm.resolved().kl_coef == 0.02
