"""Decoupled PPO: proximal logprobs (recomputed or log-linear), the capped behaviour weight."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from areal_env.testing import make_sample
from areal_env.trainers.algorithms.decoupled import (
    DecoupledLoss,
    decoupled_loss,
    loglinear_proximal,
)
from areal_env.trainers.algorithms.losses.base import LossInputs
from areal_env.trainers.algorithms.presets import resolve_preset
from areal_env.trainers.backends.base import TrainConfig
from areal_env.trainers.backends.torch_single import TorchBackend
from areal_env.types import EpisodeBatch, Trajectory


def test_loglinear_interpolates_by_staleness_and_leaves_prompts_alone():
    behav = torch.tensor([[0.0, -1.0, -1.0, -1.0, -1.0]])
    current = torch.tensor([[-9.0, -3.0, -3.0, -3.0, -3.0]])
    versions = torch.tensor([[-1, 5, 4, 1, 7]])  # prompt, on-policy, 1 and 4 stale, newer
    prox = loglinear_proximal(behav, current, versions, proximal_version=5)
    # alpha = (5 - v) / (6 - v): 0 on-policy, 1/2 one version stale, 4/5 four versions stale;
    # a token newer than the proximal version (cannot happen) is clamped to alpha 0.
    want = torch.tensor([[0.0, -1.0, -1.0 + 0.5 * -2.0, -1.0 + 0.8 * -2.0, -1.0]])
    assert torch.allclose(prox, want)


def _inputs(**overrides):
    # Three generated tokens; behaviour weights pi_prox / pi_behav = 1, 2 and 10.
    behav = torch.tensor([[-1.0, -1.0, -3.0]])
    prox = behav + torch.tensor([[0.0, math.log(2.0), math.log(10.0)]])
    current = (prox + torch.tensor([[0.0, math.log(1.1), 0.0]])).requires_grad_()
    values = {
        "logprobs": current,
        "behaviour_logprobs": behav,
        "proximal_logprobs": prox,
        "advantages": torch.ones(1, 3),
        "loss_mask": torch.ones(1, 3),
        "versions": torch.tensor([[3, 2, 0]]),
    }
    return LossInputs(**(values | overrides))


def test_capped_behaviour_weight_drops_tokens_and_is_counted():
    ppo = resolve_preset("grpo", kl_coef=0.0).loss_fn(max_len=3)
    loss_fn = DecoupledLoss(loss_fn=ppo, proximal="recompute", weight_cap=5.0, proximal_version=3)
    inputs = _inputs()
    loss, metrics = loss_fn(inputs)
    # pg_t = w * max(-A r, -A clip(r)): token 1: w 1, r 1 -> -1; token 2: w 2, r 1.1
    # (inside [0.8, 1.2]) -> -2.2; token 3: w 10 > cap 5 -> dropped (0). Token mean over 3.
    assert loss.item() == pytest.approx((-1.0 - 2.2 + 0.0) / 3)
    loss.backward()
    # d loss / d lp_t = w * -A * r / 3: -1/3, -2.2/3, and 0 for the dropped token.
    assert torch.allclose(inputs.logprobs.grad, torch.tensor([[-1 / 3, -2.2 / 3, 0.0]]))
    assert metrics["loss/behav_dropped_frac"] == pytest.approx(1 / 3)
    assert metrics["loss/behav_weight_mean"] == pytest.approx((1 + 2 + 10) / 3)


def test_without_a_cap_the_stale_token_keeps_its_weight():
    ppo = resolve_preset("grpo", kl_coef=0.0).loss_fn(max_len=3)
    loss_fn = DecoupledLoss(loss_fn=ppo, proximal="recompute", weight_cap=None, proximal_version=3)
    loss, metrics = loss_fn(_inputs())
    assert loss.item() == pytest.approx((-1.0 - 2.2 - 10.0) / 3)
    assert metrics["loss/behav_dropped_frac"] == 0.0


def test_loglinear_loss_uses_the_interpolated_proximal_policy():
    ppo = resolve_preset("grpo", kl_coef=0.0).loss_fn(max_len=3)
    loss_fn = DecoupledLoss(loss_fn=ppo, proximal="loglinear", weight_cap=None, proximal_version=3)
    inputs = _inputs(proximal_logprobs=None)
    loss, _ = loss_fn(inputs)
    lp, behav = inputs.logprobs.detach(), inputs.behaviour_logprobs
    alpha = torch.tensor([[0.0, 1 / 2, 3 / 4]])  # versions 3, 2, 0 against proximal version 3
    prox = behav + alpha * (lp - behav)
    ratio, weight = torch.exp(lp - prox), torch.exp(prox - behav)
    pg = weight * torch.maximum(-ratio, -ratio.clamp(0.8, 1.2))
    assert loss.item() == pytest.approx(pg.mean().item(), rel=1e-6)


def test_recompute_without_backend_logprobs_and_bad_settings_are_named():
    ppo = resolve_preset("grpo", kl_coef=0.0).loss_fn(max_len=3)
    wrapped = decoupled_loss(ppo, proximal="recompute", weight_cap=5.0, proximal_version=0)
    with pytest.raises(ValueError, match="did not supply proximal_logprobs"):
        wrapped(_inputs(proximal_logprobs=None))
    assert decoupled_loss(ppo, proximal="none", weight_cap=5.0, proximal_version=0) is ppo
    with pytest.raises(ValueError, match="proximal_policy must be one of"):
        decoupled_loss(ppo, proximal="fast", weight_cap=5.0, proximal_version=0)
    with pytest.raises(ValueError, match="behaviour_weight_cap must be > 1"):
        decoupled_loss(ppo, proximal="loglinear", weight_cap=0.5, proximal_version=0)


def _batch():
    def traj(prompt, gen, reward):
        return Trajectory(samples=[make_sample(prompt, gen, logprob=-2.0)], reward=reward)

    groups = [
        [traj([2, 10, 11], [20, 21, 3], 1.0), traj([2, 12], [22, 3], 0.0)],
        [traj([2, 13, 14, 15], [23, 3], 1.0), traj([2, 16], [24], 0.0)],
    ]
    return EpisodeBatch(groups=groups, advantages=[[1.0, -1.0], [0.5, -0.5]])


class _Spy:
    """A recompute loss that records the proximal logprobs the backend hands it."""

    needs_proximal_logprobs = True

    def __init__(self):
        self.seen = []
        self.inner = resolve_preset("grpo", kl_coef=0.0).loss_fn(max_len=4)

    def __call__(self, inputs):
        self.seen.append((inputs.proximal_logprobs.clone(), inputs.logprobs.detach().clone()))
        return self.inner(inputs)


def test_torch_backend_recomputes_the_pre_update_policy_for_every_minibatch(
    tiny_model_and_tokenizer,
):
    model, tok = tiny_model_and_tokenizer
    backend = TorchBackend(
        copy.deepcopy(model),
        TrainConfig(ppo_minibatches=2, micro_batch_size=1, lr=1e-2, warmup_steps=0),
        pad_id=tok.pad_token_id,
    )
    batch = _batch()
    padded = batch.padded(tok.pad_token_id)
    before = backend.token_logprobs(
        padded.input_ids, padded.attention_mask, temperatures=padded.temperatures
    )
    spy = _Spy()
    backend.train_step(batch, spy, rows=list(range(4)))
    assert len(spy.seen) == 4  # 2 minibatches x 2 rows, one row per micro-batch
    mask = padded.loss_mask.bool()
    for row, (prox, _current) in enumerate(spy.seen):
        m = mask[row]
        # Every minibatch's proximal policy is the weights before the step's first update...
        assert torch.allclose(prox[0][m], before[row][m], atol=1e-6)
    # ...while the second minibatch already trains moved weights (so prox is not "current").
    last_prox, last_current = spy.seen[-1]
    assert not torch.allclose(last_prox[0][mask[3]], last_current[0][mask[3]], atol=1e-4)


def test_grpo_runs_with_each_proximal_policy(tmp_path):
    from areal_env.metrics import read_metrics
    from areal_env.testing import (
        PARITY_ENV_ID,
        SMALL_RUN_OVERRIDES,
        TINY_MODEL_OVERRIDES,
        register_test_envs,
    )
    from areal_env.trainers import grpo

    register_test_envs()
    for proximal in ("recompute", "loglinear"):
        out = tmp_path / proximal
        argv = [
            *TINY_MODEL_OVERRIDES,
            *SMALL_RUN_OVERRIDES,
            f"env.id={PARITY_ENV_ID}",
            "warm_start.enabled=false",
            "rollout.max_head_offpolicyness=2",
            f"algorithm.proximal_policy={proximal}",
            "train.steps=3",
            "checkpoint.every_steps=0",
            f"output_dir={out}",
        ]
        assert grpo.main(argv) == 0
        rows = read_metrics(out / "metrics.jsonl")
        assert len(rows) == 3
        trained = [r for r in rows if "loss/behav_weight_mean" in r]
        assert trained, "the decoupled loss never ran"
        assert all(0.0 <= r["loss/behav_dropped_frac"] <= 1.0 for r in trained)


def test_fsdp_backend_recomputes_the_same_proximal_policy(tiny_model_and_tokenizer):
    # In-process 1-rank FSDP group: its collective no-grad pass gives the torch backend's
    # proximal logprobs (the 2-rank split of rows is the one its gradients already use).
    from areal_env.trainers import distributed
    from areal_env.trainers.backends.fsdp import FSDPBackend

    model, tok = tiny_model_and_tokenizer
    cfg = TrainConfig(backend="fsdp", ppo_minibatches=2, micro_batch_size=1, lr=1e-2)
    spy = _Spy()
    try:
        FSDPBackend(copy.deepcopy(model), cfg, pad_id=tok.pad_token_id).train_step(
            _batch(), spy, rows=list(range(4))
        )
    finally:
        distributed.shutdown(notify=False)
    torch_spy = _Spy()
    single = TorchBackend(copy.deepcopy(model), cfg, pad_id=tok.pad_token_id)
    single.train_step(_batch(), torch_spy, rows=list(range(4)))
    mask = _batch().padded(tok.pad_token_id).loss_mask.bool()
    assert len(spy.seen) == len(torch_spy.seen) == 4
    for row, ((got, _), (want, _)) in enumerate(zip(spy.seen, torch_spy.seen, strict=True)):
        assert torch.allclose(got[0][mask[row]], want[0][mask[row]], atol=1e-5)
