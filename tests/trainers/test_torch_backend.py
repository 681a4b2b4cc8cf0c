from __future__ import annotations

import copy

import pytest
import torch

from areal_env.testing import make_sample
from areal_env.trainers.algorithms.losses.nll import nll_loss as sft_loss
from areal_env.trainers.algorithms.presets import resolve_preset
from areal_env.trainers.backends.base import TrainConfig, gather_token_logprobs
from areal_env.trainers.backends.torch_single import TorchBackend
from areal_env.types import EpisodeBatch, Trajectory


def _traj(prompt, gen, reward=0.0, temperature=1.0):
    return Trajectory(samples=[make_sample(prompt, gen, temperature=temperature)], reward=reward)


def _batch():
    groups = [
        [_traj([2, 10, 11], [20, 21, 3], 1.0), _traj([2, 12], [22, 3], 0.0)],
        [_traj([2, 13, 14, 15], [23, 3], 1.0), _traj([2, 16], [24], 0.0)],
    ]
    return EpisodeBatch(groups=groups, advantages=[[1.0, -1.0], [0.5, -0.5]])


def test_gather_token_logprobs_matches_manual_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    ids = torch.randint(0, 7, (2, 4))
    out = gather_token_logprobs(logits, ids, temperature=0.5)
    per_row = gather_token_logprobs(logits, ids, temperature=torch.tensor([0.5, 0.5]))
    assert torch.equal(out, per_row)
    assert out[:, 0].abs().sum() == 0
    for b in range(2):
        for t in range(1, 4):
            want = torch.log_softmax(logits[b, t - 1] / 0.5, -1)[ids[b, t]]
            assert torch.isclose(out[b, t], want, atol=1e-6)


def _gradients(model, tok, micro, loss_fn, batch):
    m = copy.deepcopy(model)
    backend = TorchBackend(
        m, TrainConfig(ppo_minibatches=1, micro_batch_size=micro), pad_id=tok.pad_token_id
    )
    padded = batch.padded(tok.pad_token_id)
    m.train()
    backend.accumulate_gradients(padded, torch.arange(len(batch.row_refs())), None, loss_fn)
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("preset", ["grpo", "dr_grpo"])
def test_micro_batching_gives_the_gradient_of_the_whole_batch(tiny_model_and_tokenizer, preset):
    # Rows of different lengths: token-mean over the whole batch is not the row-weighted
    # mean of per-micro-batch token means, so this fails unless the counts are global.
    model, tok = tiny_model_and_tokenizer
    loss_fn = resolve_preset(preset, kl_coef=0.0).loss_fn(max_len=4)
    whole = _gradients(model, tok, 4, loss_fn, _batch())
    for micro in (1, 3):
        split = _gradients(model, tok, micro, loss_fn, _batch())
        assert whole.keys() == split.keys() and whole
        for name, g in whole.items():
            torch.testing.assert_close(split[name], g, atol=1e-6, rtol=1e-4, msg=name)


def test_train_step_moves_weights_against_the_gradient(tiny_model_and_tokenizer):
    # One plain SGD-like check: after a step on the NLL, the NLL of the same batch falls.
    model, tok = tiny_model_and_tokenizer
    m = copy.deepcopy(model)
    backend = TorchBackend(
        m, TrainConfig(lr=1e-2, warmup_steps=0, ppo_minibatches=1), pad_id=tok.pad_token_id
    )
    padded = _batch().padded(tok.pad_token_id)

    def nll() -> float:
        lp = backend.token_logprobs(padded.input_ids, padded.attention_mask)
        return float(-(lp * padded.loss_mask).sum() / padded.loss_mask.sum())

    before = nll()
    stats = backend.train_step(_batch(), sft_loss, rows=[0, 1, 2, 3])
    assert stats["train/grad_norm"] > 0
    assert nll() < before - 1e-3


def test_each_row_is_scored_at_its_own_temperature(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    batch = EpisodeBatch(
        groups=[[_traj([2, 10], [20, 3], temperature=0.5), _traj([2, 10], [20, 3])]]
    )
    padded = batch.padded(tok.pad_token_id)
    assert padded.temperatures.tolist() == [0.5, 1.0]
    backend = TorchBackend(copy.deepcopy(model), TrainConfig(), pad_id=tok.pad_token_id)
    lp = backend.token_logprobs(
        padded.input_ids, padded.attention_mask, temperatures=padded.temperatures
    )
    with torch.no_grad():
        logits = model(input_ids=padded.input_ids[:1]).logits[0]
    for row, t in ((0, 0.5), (1, 1.0)):
        want = torch.log_softmax(logits[1] / t, -1)[20]  # token 20 at position 2
        assert lp[row, 2].item() == pytest.approx(want.item(), abs=1e-5)


def test_logprobs_are_those_of_a_plain_forward(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    backend = TorchBackend(copy.deepcopy(model), TrainConfig(), pad_id=tok.pad_token_id)
    padded = _batch().padded(tok.pad_token_id)
    lp = backend.token_logprobs(padded.input_ids, padded.attention_mask)
    ids = torch.tensor([_batch().trajectories[0].samples[0].input_ids])
    with torch.no_grad():
        want = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
    want = want.gather(-1, ids[0, 1:, None])[:, 0]
    assert torch.allclose(lp[0, 1 : ids.shape[1]], want, atol=1e-5)


def test_save_load_roundtrip_restores_model_optimizer_and_reference(
    tmp_path, tiny_model_and_tokenizer
):
    model, tok = tiny_model_and_tokenizer
    cfg = TrainConfig(lr=1e-3, warmup_steps=2)
    ref = copy.deepcopy(model)
    a = TorchBackend(copy.deepcopy(model), cfg, pad_id=tok.pad_token_id, ref_model=ref)
    a.train_step(_batch(), sft_loss, rows=[0, 1])
    a.save(str(tmp_path / "ck"))
    b = TorchBackend(
        copy.deepcopy(model), cfg, pad_id=tok.pad_token_id, ref_model=copy.deepcopy(model)
    )
    b.load(str(tmp_path / "ck"))
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    assert b.lr_schedule.last_epoch == a.lr_schedule.last_epoch
    # Same next step from the same state gives the same weights.
    a.train_step(_batch(), sft_loss, rows=[2, 3])
    b.train_step(_batch(), sft_loss, rows=[2, 3])
    for k, v in a.model.state_dict().items():
        assert torch.allclose(v, b.model.state_dict()[k], atol=1e-6), k
