"""PPO's critic: the clipped value loss, value regression, and trainers/ppo.py end to end."""

from __future__ import annotations

import pytest
import torch

from areal_env.checkpoint import list_checkpoints
from areal_env.metrics import read_metrics
from areal_env.testing import (
    PARITY_ENV_ID,
    SMALL_RUN_OVERRIDES,
    TINY_MODEL_OVERRIDES,
    make_sample,
    register_test_envs,
)
from areal_env.trainers import grpo, ppo
from areal_env.trainers.critic import Critic, CriticConfig, clipped_value_loss
from areal_env.types import EpisodeBatch, Trajectory

# --- the clipped value loss against hand-computed numbers -------------------------------


def _loss_case():
    # Two tokens; the values the advantages were computed with were 0.4 and 0.4.
    # Token 0: v = 0.5, R = 0.0: (v - R)^2 = 0.25; v_clip = 0.4 + clamp(0.1) = 0.5, same 0.25.
    # Token 1: v = 1.0, R = 1.0: (v - R)^2 = 0;   v_clip = 0.4 + clamp(0.6, 0.2) = 0.6,
    #          (0.6 - 1)^2 = 0.16 is the larger: the clipped error is used (no gradient).
    values = torch.tensor([[0.5, 1.0]], requires_grad=True)
    return values, torch.tensor([[0.4, 0.4]]), torch.tensor([[0.0, 1.0]]), torch.ones(1, 2)


def test_clipped_value_loss_matches_hand_computed_values():
    values, old, ret, mask = _loss_case()
    loss, m = clipped_value_loss(values, old, ret, mask, value_clip=0.2)
    # 0.5 * (0.25 + 0.16) / 2 tokens = 0.1025
    assert loss.item() == pytest.approx(0.1025, abs=1e-6)
    assert m["critic/clip_frac"] == pytest.approx(0.5)
    assert m["critic/value_error"] == pytest.approx((0.5 + 0.0) / 2)
    loss.backward()
    # d/dv of 0.5 * (v - R)^2 / 2 on token 0 is (0.5 - 0) / 2 = 0.25; token 1 is clipped: 0.
    assert values.grad[0].tolist() == pytest.approx([0.25, 0.0], abs=1e-6)


def test_value_clip_zero_is_the_plain_squared_error():
    values, old, ret, mask = _loss_case()
    loss, m = clipped_value_loss(values, old, ret, mask, value_clip=0.0)
    assert loss.item() == pytest.approx(0.5 * (0.25 + 0.0) / 2, abs=1e-6)  # 0.0625
    assert m["critic/clip_frac"] == 0.0


def test_value_loss_uses_the_given_token_count_and_ignores_masked_tokens():
    values, old, ret, _ = _loss_case()
    mask = torch.tensor([[1.0, 0.0]])
    loss, _ = clipped_value_loss(values, old, ret, mask, value_clip=0.2, num_tokens=4.0)
    assert loss.item() == pytest.approx(0.5 * 0.25 / 4, abs=1e-6)


# --- the critic on a fixed batch ---------------------------------------------------------


def _batch():
    def traj(prompt, gen, reward):
        return Trajectory(samples=[make_sample(prompt, gen)], reward=reward)

    groups = [
        [traj([2, 10, 11], [20, 21, 3], 1.0), traj([2, 12], [22, 3], 0.0)],
        [traj([2, 13, 14, 15], [23, 3], 1.0), traj([2, 16], [24], 0.0)],
    ]
    return EpisodeBatch(groups=groups)


@pytest.fixture(scope="module")
def small_model_and_tokenizer(tmp_path_factory):
    """The tiny model's smallest shape (as in TINY_MODEL_OVERRIDES): critic steps in ms."""
    from areal_env.models.tiny import TinyModelConfig, build_tiny_model, load_model_and_tokenizer

    shape = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    model, tok = load_model_and_tokenizer(build_tiny_model(tmp_path_factory.mktemp("m"), shape))
    return model.eval(), tok


def _critic(model, tok, **kw):
    return Critic(model, CriticConfig(**kw), pad_id=tok.pad_token_id)


def _value_loss(critic, batch, rows, returns):
    values = critic.values(batch, rows)
    mask = batch.padded(critic.pad_id, rows=rows).loss_mask
    return clipped_value_loss(values, values, returns, mask, value_clip=0.0)[0].item()


def test_critic_regression_reduces_the_value_loss_on_a_fixed_batch(small_model_and_tokenizer):
    model, tok = small_model_and_tokenizer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    critic = _critic(model, tok, lr=3e-3, value_clip=0.0)
    batch = _batch()
    rows = list(range(4))
    padded = batch.padded(tok.pad_token_id)
    returns = padded.loss_mask * padded.rewards.unsqueeze(-1)  # the Monte-Carlo return
    first = _value_loss(critic, batch, rows, returns)
    assert first == pytest.approx(0.5 * 5 / 8, abs=1e-6)  # zero head: V = 0; 5 of 8 tokens R=1
    body_before = {k: v.clone() for k, v in critic.model.body.state_dict().items()}
    for _ in range(8):
        old = critic.values(batch, rows)
        stats = critic.train_step(batch, rows, returns, old)
    last = _value_loss(critic, batch, rows, returns)
    assert last < 0.25 * first, (first, last)
    assert stats["critic/lr"] == pytest.approx(3e-3)
    # The body learned too (not only the head), and the policy was not touched.
    assert any(
        not torch.equal(v, critic.model.body.state_dict()[k]) for k, v in body_before.items()
    )
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_critic_values_are_micro_batch_invariant_and_shaped_like_the_rows(
    small_model_and_tokenizer,
):
    model, tok = small_model_and_tokenizer
    whole = _critic(model, tok)
    torch.nn.init.normal_(whole.model.head.weight)  # a non-trivial head
    one = _critic(model, tok, micro_batch_size=1)
    one.model.load_state_dict(whole.model.state_dict())
    batch = _batch()
    v_whole, v_one = whole.values(batch, [0, 2, 3]), one.values(batch, [0, 2, 3])
    assert v_whole.shape == batch.padded(tok.pad_token_id, rows=[0, 2, 3]).input_ids.shape
    assert torch.allclose(v_whole, v_one, atol=1e-5)
    assert v_whole[:, 0].abs().sum() == 0  # nothing precedes the first token


def test_critic_save_and_load_restore_its_weights_and_optimizer(
    small_model_and_tokenizer, tmp_path
):
    model, tok = small_model_and_tokenizer
    critic = _critic(model, tok)
    batch, rows = _batch(), [0, 1, 2, 3]
    returns = batch.padded(tok.pad_token_id).loss_mask
    critic.train_step(batch, rows, returns, critic.values(batch, rows))
    critic.save(str(tmp_path / "c"))
    fresh = _critic(model, tok)
    assert not torch.equal(fresh.values(batch, rows), critic.values(batch, rows))
    fresh.load(str(tmp_path / "c"))
    assert torch.equal(fresh.values(batch, rows), critic.values(batch, rows))
    assert (
        fresh.optimizer.state_dict()["state"].keys()
        == critic.optimizer.state_dict()["state"].keys()
    )
    with pytest.raises(ValueError, match="no critic state"):
        fresh.load(str(tmp_path / "missing"))


# --- configs and the trainers' entry points ---------------------------------------------


def test_the_ppo_preset_is_a_critic_preset_kept_out_of_grpos_presets():
    from areal_env.trainers.algorithms.presets import PRESETS, get_preset, resolve_preset

    preset = resolve_preset("ppo", clip_low=0.1)
    assert "ppo" not in PRESETS  # every PRESETS row must run in trainers/grpo.py
    assert (preset.advantage, preset.loss, preset.clip_low) == ("gae", "ppo_clip", 0.1)
    assert preset.needs_critic and not preset.group_relative
    assert not any(get_preset(name).needs_critic for name in PRESETS)


def test_grpo_refuses_the_ppo_preset_and_points_to_trainers_ppo(capsys):
    assert grpo.main(["algorithm.preset=ppo"]) == 2
    assert "trainers/ppo.py" in capsys.readouterr().err


def test_ppo_config_needs_no_groups_and_refuses_what_it_cannot_run(capsys):
    from areal_env.config import load_config

    cfg = load_config(ppo.PPOConfig, ["rollout.n_samples=1"])
    assert cfg.rollout.n_samples == 1 and cfg.algorithm.resolved().needs_critic
    assert ppo.main(["train.backend=fsdp"]) == 2
    assert "one device" in capsys.readouterr().err
    assert ppo.main(["algorithm.preset=grpo"]) == 2
    assert "trainers/grpo.py" in capsys.readouterr().err
    assert ppo.main(["critic.lam=1.5"]) == 2


# --- trainers/ppo.py end to end ------------------------------------------------------------

SHORT = [
    *TINY_MODEL_OVERRIDES,
    *SMALL_RUN_OVERRIDES,
    f"env.id={PARITY_ENV_ID}",
    "warm_start.enabled=false",
    "rollout.n_samples=1",  # no groups: the critic is the baseline
    "rollout.batch_size=8",
    "inference.sampling.max_new_tokens=2",
    "checkpoint.every_steps=2",
    "checkpoint.keep_last=5",
    "metrics.plot=false",
]


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(next(folder.glob("*.safetensors"))))


def _critic_state(checkpoint):
    return torch.load(checkpoint / "backend" / "critic" / "critic.pt", weights_only=True)


def test_ppo_run_trains_policy_and_critic_checkpoints_both_and_resumes(tmp_path, monkeypatch):
    register_test_envs()
    out = tmp_path / "run"
    real_push = grpo.push_weights

    async def crash_at_step_5(backend, engine, scheduler, *, version, weights_dir=None):
        if version == 5:
            raise KeyboardInterrupt("simulated interruption")
        await real_push(backend, engine, scheduler, version=version, weights_dir=weights_dir)

    monkeypatch.setattr(grpo, "push_weights", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        ppo.main([*SHORT, "train.steps=6", f"output_dir={out}"])
    assert [p.name for p in list_checkpoints(out)] == ["step_000002", "step_000004"]
    first, saved = (_critic_state(c) for c in list_checkpoints(out))
    head = "head.weight"
    assert not torch.equal(first["model"][head], saved["model"][head]), "critic did not train"
    assert torch.any(saved["model"][head] != 0), "the critic head never left its zero init"

    # Resume: the critic must come back from step 4, not be re-copied from the policy.
    loaded = []
    real_load = ppo.Critic.load

    def spy_load(self, path):
        real_load(self, path)
        loaded.append(torch.equal(self.model.state_dict()[head], saved["model"][head]))

    monkeypatch.setattr(ppo.Critic, "load", spy_load)
    monkeypatch.setattr(grpo, "push_weights", real_push)
    assert ppo.main([*SHORT, "train.steps=6", f"output_dir={out}", "--resume"]) == 0
    assert loaded == [True], "resume did not restore the critic's weights"
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(r["train/rows"] > 0 and "critic/loss" in r for r in rows)
    final_critic = _critic_state(list_checkpoints(out)[-1])
    assert not torch.equal(final_critic["model"][head], saved["model"][head])
    assert final_critic["lr_schedule"]["last_epoch"] == 6 * 2  # 2 critic minibatches a step
    initial, final = _weights(out / "tiny_model"), _weights(out / "final_model")
    assert any(not torch.equal(initial[k], final[k]) for k in initial), "policy did not train"
