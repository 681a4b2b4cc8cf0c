"""LoRA through peft: frozen base, merged weights for inference, adapter-only checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch

from areal_env.config import load_config
from areal_env.metrics import read_metrics
from areal_env.testing import (
    PARITY_ENV_ID,
    SMALL_RUN_OVERRIDES,
    SMALL_WARM_START_OVERRIDES,
    TINY_MODEL_OVERRIDES,
    make_sample,
    register_test_envs,
)
from areal_env.trainers import grpo
from areal_env.trainers.algorithms.losses.nll import nll_loss as sft_loss
from areal_env.trainers.backends.base import TrainConfig
from areal_env.trainers.backends.lora import LoRAConfig, lora_layers
from areal_env.trainers.backends.torch_single import TorchBackend
from areal_env.trainers.config import GRPOConfig
from areal_env.types import EpisodeBatch, Trajectory

RANK, ALPHA = 4, 16.0


def _traj(prompt, gen, reward=0.0):
    return Trajectory(samples=[make_sample(prompt, gen)], reward=reward)


def _batch():
    groups = [
        [_traj([2, 10, 11], [20, 21, 3], 1.0), _traj([2, 12], [22, 3], 0.0)],
        [_traj([2, 13, 14, 15], [23, 3], 1.0), _traj([2, 16], [24], 0.0)],
    ]
    return EpisodeBatch(groups=groups, advantages=[[1.0, -1.0], [0.5, -0.5]])


def _lora_config(**kw) -> TrainConfig:
    lora = LoRAConfig(rank=RANK, alpha=ALPHA, target_modules=["q_proj", "v_proj"])
    return TrainConfig(lr=1e-2, warmup_steps=0, ppo_minibatches=2, lora=lora, **kw)


def _backend(model, tok, ref=None) -> TorchBackend:
    return TorchBackend(
        copy.deepcopy(model), _lora_config(), pad_id=tok.pad_token_id, ref_model=ref
    )


def _snapshot(backend: TorchBackend) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in backend.model.named_parameters()}


def test_a_lora_step_changes_only_the_adapters(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    backend = _backend(model, tok)
    before = _snapshot(backend)
    adapter = {k for k in before if ".lora_A." in k or ".lora_B." in k}
    assert adapter and len(adapter) < len(before)
    # Two optimizer steps: B starts at zero, so A moves only once B has.
    backend.train_step(_batch(), sft_loss, rows=[0, 1, 2, 3])
    after = dict(backend.model.named_parameters())
    changed = {k for k, v in before.items() if not torch.equal(v, after[k])}
    assert changed == adapter, f"changed: {sorted(changed ^ adapter)}"
    in_optimizer = {id(p) for g in backend.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(after[k]) for k in adapter}


def test_merged_weights_are_base_plus_scaled_b_times_a_and_forward_like_peft(
    tmp_path, tiny_model_and_tokenizer
):
    from transformers import AutoModelForCausalLM

    model, tok = tiny_model_and_tokenizer
    backend = _backend(model, tok)
    backend.train_step(_batch(), sft_loss, rows=[0, 1, 2, 3])  # B != 0: a real delta
    merged = backend.weights_for_sync()
    assert merged.keys() == model.state_dict().keys()  # the base model's own names
    base = backend.model.get_base_model().state_dict()
    targets = list(lora_layers(backend.model))
    assert len(targets) == 2 * model.config.num_hidden_layers
    for name in targets:
        a = base[f"{name}.lora_A.default.weight"]
        b = base[f"{name}.lora_B.default.weight"]
        w = base[f"{name}.base_layer.weight"]
        assert b.abs().sum() > 0, name
        want = w + (ALPHA / RANK) * b @ a
        torch.testing.assert_close(merged[f"{name}.weight"], want, atol=1e-6, rtol=0, msg=name)
    for key, value in model.state_dict().items():  # untargeted tensors are the base's
        if not any(key == f"{n}.weight" for n in targets):
            assert torch.equal(merged[key], value), key

    backend.save_weights(str(tmp_path / "merged"))
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    for key, value in merged.items():  # the server folder holds the same merged weights
        assert torch.equal(plain.state_dict()[key], value), key
    ids = _batch().padded(tok.pad_token_id).input_ids
    backend.model.eval()
    with torch.no_grad():
        want = backend.model(input_ids=ids).logits
        got = plain(input_ids=ids).logits
        copy_ = copy.deepcopy(model)
        copy_.load_state_dict(merged)
        loaded = copy_(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(loaded, want, atol=1e-5, rtol=0)
    assert not torch.allclose(want, model(input_ids=ids).logits, atol=1e-4)


def test_checkpoint_holds_only_the_adapter_and_resume_is_exact(tmp_path, tiny_model_and_tokenizer):
    from safetensors.torch import load_file

    model, tok = tiny_model_and_tokenizer
    a = _backend(model, tok, ref=copy.deepcopy(model))  # a KL reference: not copied either
    a.train_step(_batch(), sft_loss, rows=[0, 1])
    a.save(str(tmp_path / "ck"))
    tensors = sorted(p.relative_to(tmp_path / "ck").as_posix() for p in tmp_path.rglob("*.*"))
    assert [t for t in tensors if t.endswith((".safetensors", ".bin"))] == [
        "adapter/adapter_model.safetensors"
    ], tensors
    assert "adapter/adapter_config.json" in tensors
    assert not [t for t in tensors if t.endswith(".pt") and t != "optimizer.pt"], tensors
    saved = load_file(tmp_path / "ck" / "adapter" / "adapter_model.safetensors")
    assert saved and all(".lora_A." in k or ".lora_B." in k for k in saved)

    b = _backend(model, tok, ref=copy.deepcopy(model))
    b.load(str(tmp_path / "ck"))
    pa, pb = dict(a.model.named_parameters()), dict(b.model.named_parameters())
    for k, v in pa.items():
        assert torch.equal(v, pb[k]), k
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys() and sa["state"]
    for i, st in sa["state"].items():
        for name, t in st.items():
            assert torch.equal(t, sb["state"][i][name]), (i, name)
    assert b.lr_schedule.last_epoch == a.lr_schedule.last_epoch
    # The next step from the restored state is the step the original takes.
    a.train_step(_batch(), sft_loss, rows=[2, 3])
    b.train_step(_batch(), sft_loss, rows=[2, 3])
    for k, v in a.weights_for_sync().items():
        assert torch.equal(v, b.weights_for_sync()[k]), k


def test_an_adapter_does_not_load_onto_another_base_or_reference(
    tmp_path, tiny_model_and_tokenizer
):
    model, tok = tiny_model_and_tokenizer
    a = _backend(model, tok, ref=copy.deepcopy(model))
    a.save(str(tmp_path / "ck"))
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.embed_tokens.weight[0, 0] += 1.0  # e.g. not the warm-started base
    b = _backend(other, tok, ref=copy.deepcopy(model))
    with pytest.raises(ValueError, match="different base model"):
        b.load(str(tmp_path / "ck"))
    c = _backend(model, tok, ref=copy.deepcopy(other))
    with pytest.raises(ValueError, match="different ref model"):
        c.load(str(tmp_path / "ck"))
    _backend(model, tok, ref=copy.deepcopy(model)).load(str(tmp_path / "ck"))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["train.lora.rank=-1"], "train.lora.rank"),
        (["train.lora.alpha=0"], "train.lora.alpha"),
        (["train.lora.dropout=1.0"], "train.lora.dropout"),
        (["train.lora.dropout=-0.1"], "train.lora.dropout"),
        (["train.lora.rank=8", "train.lora.target_modules=[]"], "train.lora.target_modules"),
    ],
)
def test_bad_lora_config_names_the_key(overrides, key, capsys):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_config(GRPOConfig, overrides)
    assert grpo.main(overrides) == 2
    assert key in capsys.readouterr().err


def test_lora_config_accepts_the_documented_form():
    cfg = load_config(
        GRPOConfig,
        ["train.lora.rank=8", "train.lora.alpha=16", "train.lora.target_modules=[q_proj,v_proj]"],
    )
    assert cfg.train.lora == LoRAConfig(rank=8, alpha=16.0, target_modules=["q_proj", "v_proj"])
    assert not load_config(GRPOConfig, []).train.lora.enabled  # off by default
    assert not LoRAConfig(rank=0, target_modules=[]).enabled


def test_lora_grpo_run_trains_only_adapters_and_saves_a_merged_model(tmp_path, monkeypatch):
    # ParityEnv, not the default task: a few-step warm start of the tiny model leaves
    # every default-task reward at 0 (no gradient); parity groups are mixed at once.
    from safetensors.torch import load_file

    register_test_envs()
    out = tmp_path / "run"
    seen: dict[str, object] = {}
    real_make = grpo.make_backend

    def capture(model, config, **kw):
        seen["warm"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        backend = real_make(model, config, **kw)
        seen["backend"] = backend
        return backend

    monkeypatch.setattr(grpo, "make_backend", capture)
    argv = [
        *TINY_MODEL_OVERRIDES,
        f"env.id={PARITY_ENV_ID}",
        *SMALL_WARM_START_OVERRIDES,
        *SMALL_RUN_OVERRIDES,
        "checkpoint.every_steps=2",
        "metrics.plot=false",
        "train.steps=3",
        "train.lr=5e-3",
        f"train.lora.rank={RANK}",
        "train.lora.target_modules=[q_proj,v_proj]",
        f"output_dir={out}",
    ]
    assert grpo.main(argv) == 0
    assert any(r.get("train/rows", 0) > 0 for r in read_metrics(out / "metrics.jsonl"))
    warm = seen["warm"]
    backend = seen["backend"]
    assert isinstance(backend, TorchBackend) and backend.lora
    initial = load_file(str(next((out / "tiny_model").glob("*.safetensors"))))
    assert any(not torch.equal(initial[k], warm[k]) for k in initial), "no warm start"
    # RL moved only the adapters: the frozen base is still the warm-started model.
    for key, value in backend.model.get_base_model().state_dict().items():
        if ".lora_" not in key:
            assert torch.equal(value, warm[key.replace(".base_layer.", ".")]), key
    final = load_file(str(next((out / "final_model").glob("*.safetensors"))))
    assert final.keys() == initial.keys(), "final_model is not a plain HF model"
    assert not list((out / "final_model").glob("adapter_*"))
    changed = [k for k in final if not torch.equal(final[k], warm[k])]
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)
    ck = sorted((out / "checkpoints").iterdir())[-1] / "backend"
    assert (ck / "adapter" / "adapter_model.safetensors").exists()
    assert not (ck / "model").exists()


WARM_ON = list(SMALL_WARM_START_OVERRIDES)


@pytest.mark.parametrize("warm", [["warm_start.enabled=false"], WARM_ON], ids=["cold", "warm"])
def test_lora_run_resumes_from_an_adapter_checkpoint(tmp_path, monkeypatch, warm):
    # Resume skips the warm start, and an adapter checkpoint only fits the base it was
    # trained on: a warm-started run keeps its base in output_dir/warm_start_model.
    register_test_envs()
    out = tmp_path / "run"
    argv = [
        *TINY_MODEL_OVERRIDES,
        f"env.id={PARITY_ENV_ID}",
        *warm,
        "algorithm.kl_coef=0.1",
        "rollout.batch_size=2",
        "rollout.n_samples=4",
        "checkpoint.every_steps=2",
        "metrics.wandb_mode=disabled",
        "metrics.progress=false",
        "metrics.plot=false",
        "train.steps=4",
        f"train.lora.rank={RANK}",
        f"output_dir={out}",
    ]
    real_push = grpo.push_weights

    async def crash_at_step_3(backend, engine, scheduler, *, version, weights_dir=None):
        if version == 3:
            raise KeyboardInterrupt("simulated interruption")
        await real_push(backend, engine, scheduler, version=version, weights_dir=weights_dir)

    monkeypatch.setattr(grpo, "push_weights", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        grpo.main(argv)
    monkeypatch.setattr(grpo, "push_weights", real_push)
    assert grpo.main([*argv, "--resume"]) == 0
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]
    assert (out / "warm_start_model").exists() == (warm is WARM_ON)
    ck = sorted((out / "checkpoints").glob("step_*"))[-1] / "backend"
    assert sorted(p.name for p in ck.iterdir()) == [
        "adapter",
        "base_fingerprint.txt",
        "optimizer.pt",
        "ref_fingerprint.txt",
    ]


def test_lora_steps_move_the_policy_against_the_gradient(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    backend = _backend(model, tok)
    padded = _batch().padded(tok.pad_token_id)

    def nll() -> float:
        lp = backend.token_logprobs(padded.input_ids, padded.attention_mask)
        return float(-(lp * padded.loss_mask).sum() / padded.loss_mask.sum())

    before = nll()
    for _ in range(3):
        backend.train_step(_batch(), sft_loss, rows=[0, 1, 2, 3])
    assert nll() < before - 1e-2
