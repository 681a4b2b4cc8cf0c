from __future__ import annotations

import copy

import torch

from areal_env.trainers.algorithms.losses.nll import nll_loss as sft_loss
from areal_env.trainers.backends.base import TrainConfig, gather_token_logprobs
from areal_env.trainers.backends.torch_single import TorchBackend
from areal_env.types import EpisodeBatch, Trajectory


def _traj(prompt, gen, reward=0.0):
    t = Trajectory(reward=reward)
    t.append_prompt(prompt)
    t.input_ids += gen
    t.loss_mask += [1] * len(gen)
    t.logprobs += [-1.0] * len(gen)
    t.versions += [0] * len(gen)
    return t


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
    assert out[:, 0].abs().sum() == 0
    for b in range(2):
        for t in range(1, 4):
            want = torch.log_softmax(logits[b, t - 1] / 0.5, -1)[ids[b, t]]
            assert torch.isclose(out[b, t], want, atol=1e-6)


def test_train_step_changes_weights_and_micro_batching_gives_the_same_update(
    tiny_model_and_tokenizer,
):
    model, tok = tiny_model_and_tokenizer
    results = []
    for micro in (4, 1):
        m = copy.deepcopy(model)
        before = {k: v.clone() for k, v in m.state_dict().items()}
        backend = TorchBackend(
            m,
            TrainConfig(lr=1e-3, warmup_steps=0, ppo_minibatches=1, micro_batch_size=micro),
            pad_id=tok.pad_token_id,
        )
        stats = backend.train_step(_batch(), sft_loss, rows=[0, 1, 2, 3])
        assert stats["train/grad_norm"] > 0
        changed = [k for k, v in m.state_dict().items() if not torch.equal(v, before[k])]
        assert changed
        results.append(m.state_dict())
    # token_mean over rows of different lengths is not a mean of per-row means, but
    # the micro-batch weighting must still give a close update.
    for k in results[0]:
        assert torch.allclose(results[0][k], results[1][k], atol=5e-3), k


def test_logprobs_are_those_of_a_plain_forward(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    backend = TorchBackend(copy.deepcopy(model), TrainConfig(), pad_id=tok.pad_token_id)
    padded = _batch().padded(tok.pad_token_id)
    lp = backend.token_logprobs(padded.input_ids, padded.attention_mask)
    ids = torch.tensor([_batch().trajectories[0].input_ids])
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
