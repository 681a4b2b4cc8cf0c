"""Megatron-core training backend (``train.backend=megatron``): tensor and pipeline parallel.

The HF policy is converted (:mod:`.megatron_convert`) into megatron-core's
``GPTModel`` built with megatron's local layer spec, split over
``train.megatron.tensor_parallel_size`` (TP) x ``pipeline_parallel_size`` (PP)
ranks. Rollouts, weight sync and every file written stay in HF format.

How the ranks work together (as in :mod:`.fsdp`, see ``docs/distributed.md``):

* Rank 0 runs the trainer and calls this backend as any other; each call is first
  sent to the other ranks (:func:`areal_env.trainers.distributed.send`), which
  run it in :meth:`MegatronBackend.follow`. Every rank holds the whole batch.
* Data parallelism is not implemented: the run has exactly TP x PP ranks and
  every rank works on every row of a minibatch (TP ranks on the same rows with
  different weight shards; PP stages on the same rows, one after the other).
* A minibatch is cut as in ``TorchBackend``. With PP=1 its micro-batches run
  forward/loss/backward one after the other (megatron's no-pipelining schedule
  would do the same, but allocates a counter on ``"cuda"`` by name, so it cannot
  run on CPU); with PP>1 the same forward step and loss go through
  megatron-core's 1F1B schedule (``get_forward_backward_func``). The loss is the
  same ``LossFn`` on the same ``LossInputs`` as on one device, normalised by the
  whole minibatch's token and sequence counts, and the schedule is told not to
  rescale it (``calculate_per_token_loss`` with a loss function returning 3 values).
* The policy's forward is the plain causal one: ``share_prompt_prefix`` applies
  only to the frozen HF reference model (replicated on every rank).
* Logits stay split along the vocabulary (megatron's ``parallel_output``):
  :func:`vocab_parallel_token_logprobs` takes the log-softmax across the TP
  group without gathering the vocabulary.
* The optimizer is plain ``torch.optim.AdamW`` over this rank's megatron
  parameters (each rank updates its own shard; replicated parameters get
  identical gradients on every TP rank, so they stay identical). Megatron's
  ``DistributedOptimizer`` is not used: it needs megatron's DDP wrapper with
  CUDA gradient buffers. Gradient clipping uses the global norm over all shards.
* Weight sync gathers TP shards (``all_gather``) and PP stages
  (``all_gather_object``) and converts back to HF names on rank 0.
* Checkpoints: HF weights (``model/``) + one AdamW state file per rank + LR
  schedule; they load onto the same TP x PP layout only.

What was verified, and where (``tests/trainers/test_megatron_backend.py``):

* On CPU (gloo), with megatron-core's own layers: TP=1 in-process and TP=2 on 2
  processes, PP=1: the vocab-parallel logprobs (and their gradients) against the
  full-vocabulary ones; one ``train_step`` against ``TorchBackend`` (gradients
  within 1e-6, loss and metrics, weights after AdamW within 5e-5); weight sync
  back to HF names (exact); save/load into a fresh backend; ``trainers/grpo.py``
  with this backend on one rank, checkpoint and resume. On CPU a few CUDA-only
  calls in megatron-core (device lookups, the CUDA RNG tracker's fork,
  ``torch.cuda.synchronize``) are redirected while the model runs
  (:func:`cpu_shim`); dropout is 0, so the RNG fork is a no-op.
* Not verified anywhere yet (no GPU was available when this was written):
  PP>1 (megatron-core's 1F1B schedule allocates on ``"cuda"``, so it is refused
  on CPU; written with variable-shape point-to-point and ``batch_p2p_comm=False``),
  NCCL, the CUDA RNG seeding, and ``bf16``. ``scripts/gpu_check_megatron.sh``
  runs the CPU test's checks for TP=2, PP=2 and TP=2 x PP=2 on GPUs (not bf16).
* Multi-rank runs of ``trainers/grpo.py`` need it to start the other ranks in
  :func:`serve_main_rank`, as it does for fsdp.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from areal_env.trainers import distributed
from areal_env.trainers.algorithms.losses.base import LossFn, LossInputs
from areal_env.trainers.backends.base import (
    TrainConfig,
    gather_token_logprobs,
    make_optimizer,
    needs_proximal_logprobs,
)
from areal_env.trainers.backends.fsdp import _broadcast_module
from areal_env.trainers.backends.megatron_config import MegatronConfig
from areal_env.trainers.backends.megatron_convert import (
    hf_to_megatron,
    megatron_model_kwargs,
    megatron_to_hf,
)
from areal_env.trainers.backends.prefix_sharing import forward_logits
from areal_env.trainers.backends.rank_driven import RankZeroDriven, follow_rank_zero
from areal_env.types import EpisodeBatch, PaddedBatch

EXTRA_FILE = "backend_extra.pt"
"""LR schedule and the TP x PP layout the checkpoint was written with (rank 0 writes it)."""
REF_FILE = "ref_model.pt"
"""The frozen reference model's state dict (replicated, so rank 0 writes it)."""
GLU_FC1 = "mlp.linear_fc1."
"""Megatron's fused ``[gate; up]`` projection: each TP rank holds ``[gate_r; up_r]``."""
VOCAB_ROWS = ("embedding.word_embeddings.weight", "output_layer.weight")
"""Weights whose rows are the (padded) vocabulary."""


# --- vocab-parallel log-softmax ---


class _SumOverRanks(torch.autograd.Function):
    """All-reduce sum whose backward passes the gradient through unchanged.

    Every rank of the group computes the same loss from the sum, so the gradient
    of the loss with respect to this rank's addend is the gradient with respect to
    the sum, which this rank already holds: no collective in backward.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        x = x.clone()
        if _group_size(group) > 1:
            dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def _group_size(group: Any) -> int:
    return dist.get_world_size(group) if dist.is_initialized() else 1


def _group_rank(group: Any) -> int:
    return dist.get_rank(group) if dist.is_initialized() else 0


def _scaled_shard(
    logits_shard: torch.Tensor,
    temperature: float | torch.Tensor,
    group: Any,
    vocab_size: int | None,
) -> tuple[torch.Tensor, int]:
    """``logits_shard[:, :-1] / T`` in fp32, padding columns at -inf; the shard's first id."""
    t = torch.as_tensor(temperature, dtype=torch.float32, device=logits_shard.device)
    t = torch.where(t > 0, t, torch.ones_like(t))  # greedy (T=0) is scored at 1, as on one device
    if t.dim() == 1:
        t = t.view(-1, 1, 1)
    x = logits_shard[:, :-1].float() / t
    width = x.shape[-1]
    start = _group_rank(group) * width
    if vocab_size is not None and start + width > vocab_size:
        cols = torch.arange(start, start + width, device=x.device)
        x = x.masked_fill(cols >= vocab_size, float("-inf"))
    return x, start


def vocab_parallel_token_logprobs(
    logits_shard: torch.Tensor,
    ids: torch.Tensor,
    temperature: float | torch.Tensor,
    group: Any,
    *,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Token logprobs from logits split along the vocabulary over ``group`` (with gradient).

    Equals ``gather_token_logprobs`` on the full logits, without gathering them:
    the log-sum-exp needs the max (all-reduce MAX, no gradient: it only shifts)
    and the sum of exponentials (all-reduce SUM) over the group, and the target
    token's logit comes from the one rank whose shard holds it (all-reduce SUM of
    a masked pick).

    Args:
        logits_shard: [B, L, V / group size] this rank's contiguous vocabulary slice
            (rank r holds ids ``r * width ... (r + 1) * width - 1``).
        ids: [B, L] the tokens (global ids).
        temperature: a float, or [B] one per row (0, greedy, is scored at 1).
        group: the tensor-parallel process group (None or a 1-rank group: no split).
        vocab_size: the real vocabulary size when the shards were padded to a
            multiple of the group size; padding columns are excluded.

    Returns:
        [B, L] with 0 at position 0 (nothing predicts the first token).
    """
    x, start = _scaled_shard(logits_shard, temperature, group, vocab_size)
    width = x.shape[-1]
    with torch.no_grad():
        top = x.max(dim=-1, keepdim=True).values
        if _group_size(group) > 1:
            dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
    sum_exp = _SumOverRanks.apply((x - top).exp().sum(-1), group)
    local = ids[:, 1:].to(x.device) - start
    inside = (local >= 0) & (local < width)
    picked = x.gather(-1, local.clamp(0, width - 1).unsqueeze(-1)).squeeze(-1)
    picked = _SumOverRanks.apply(torch.where(inside, picked, torch.zeros_like(picked)), group)
    logp = picked - top.squeeze(-1) - sum_exp.log()
    return torch.nn.functional.pad(logp, (1, 0), value=0.0)


def vocab_parallel_entropy_sum(
    logits_shard: torch.Tensor,
    mask: torch.Tensor,
    temperature: float | torch.Tensor,
    group: Any,
    *,
    vocab_size: int | None = None,
) -> float:
    """``masked_entropy_sum`` for vocabulary-split logits (no gradient), summed over ``mask``.

    Entropy = log Z - E_p[x] with both terms reduced over the group.
    """
    with torch.no_grad():
        x, _ = _scaled_shard(logits_shard, temperature, group, vocab_size)
        top = x.max(dim=-1, keepdim=True).values
        if _group_size(group) > 1:
            dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
        e = (x - top).exp()
        sums = torch.stack([e.sum(-1), (e * torch.where(x.isfinite(), x, 0.0)).sum(-1)])
        if _group_size(group) > 1:
            dist.all_reduce(sums, group=group)
        ent = top.squeeze(-1) + sums[0].log() - sums[1] / sums[0]
        return float((ent * mask[:, 1:].to(ent.device)).sum())


# --- megatron-core on CPU ---


@contextlib.contextmanager
def cpu_shim(device_type: str) -> Iterator[None]:
    """Let megatron-core's model and schedule run on CPU (no-op on any other device).

    megatron-core asks ``torch.cuda.current_device()`` for the device of its RoPE
    frequencies and pipeline shape buffers, forks the CUDA RNG state around
    attention dropout and calls ``torch.cuda.synchronize()`` after point-to-point
    sends. On CPU those become "cpu", a plain context (dropout is 0 here) and a
    no-op, only while the block runs. Not thread-safe: nothing else may use
    ``torch.cuda`` meanwhile (on a CPU-only machine nothing can).
    """
    if device_type != "cpu":
        yield
        return
    from megatron.core.tensor_parallel import random as mrandom

    saved = (
        torch.cuda.current_device,
        torch.cuda.synchronize,
        mrandom.CudaRNGStatesTracker.fork,
    )
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment,return-value]
    torch.cuda.synchronize = lambda device=None: None  # type: ignore[assignment]
    mrandom.CudaRNGStatesTracker.fork = lambda self, name="": contextlib.nullcontext()  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        torch.cuda.current_device, torch.cuda.synchronize = saved[0], saved[1]  # type: ignore[assignment]
        mrandom.CudaRNGStatesTracker.fork = saved[2]  # type: ignore[method-assign]


def check_config(config: TrainConfig, world_size: int) -> None:
    """The checks that need no model: for the trainer's config-time errors (no megatron import).

    Raises:
        ValueError: LoRA; a world size other than TP x PP (no data parallelism).
    """
    mc = config.megatron
    if config.lora.enabled:
        raise ValueError("train.lora.rank > 0 is not supported with train.backend=megatron")
    if world_size != mc.world_size:
        raise ValueError(
            f"train.backend=megatron needs exactly train.megatron.tensor_parallel_size x "
            f"pipeline_parallel_size = {mc.world_size} ranks, got {world_size} "
            "(data parallelism is not implemented: launch that many ranks)"
        )


def check_supported(
    config: TrainConfig, hf_config: Any, world_size: int, device_type: str = "cuda"
) -> None:
    """Fail early, naming the setting, on layouts this backend does not implement.

    Raises:
        ValueError: LoRA; a world size other than TP x PP (no data parallelism);
            TP not dividing the heads / key-value heads / MLP width; PP not
            dividing the layers; tied embeddings with PP > 1; PP > 1 off CUDA.
    """
    check_config(config, world_size)
    mc = config.megatron
    tp, pp = mc.tensor_parallel_size, mc.pipeline_parallel_size
    heads = hf_config.num_attention_heads
    groups = getattr(hf_config, "num_key_value_heads", None) or heads
    for what, n in (
        ("attention heads", heads),
        ("key/value heads", groups),
        ("intermediate_size", hf_config.intermediate_size),
    ):
        if n % tp:
            raise ValueError(
                f"train.megatron.tensor_parallel_size={tp} must divide the model's {what} ({n})"
            )
    if hf_config.num_hidden_layers % pp:
        raise ValueError(
            f"train.megatron.pipeline_parallel_size={pp} must divide the model's "
            f"{hf_config.num_hidden_layers} layers"
        )
    if pp > 1 and device_type != "cuda":
        raise ValueError(
            f"train.megatron.pipeline_parallel_size > 1 needs CUDA devices, got {device_type!r}: "
            "megatron-core's pipeline schedules allocate their buffers on 'cuda' by name"
        )
    if pp > 1 and hf_config.tie_word_embeddings:
        raise ValueError(
            "train.megatron.pipeline_parallel_size > 1 needs a model with untied "
            "embeddings (tie_word_embeddings=false): the shared first/last-stage "
            "embedding is not implemented"
        )


_MEGATRON_WORLD: dict[str, Any] = {}
"""The default process group megatron's parallel_state was last built under."""


def _init_model_parallel(tp: int, pp: int, device_type: str, *, rebuild: bool) -> None:
    """Set up megatron's parallel_state for this layout.

    It is re-made when another layout exists, or with ``rebuild`` (the process
    group was just made, so existing megatron groups belong to a destroyed one).

    On CUDA it also seeds megatron's model-parallel RNG tracker, which attention
    forks around its (zero) dropout and which refuses to fork an unseeded state;
    the default CUDA RNG (rank 0 may sample rollouts with it) is put back after.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import get_cuda_rng_tracker, model_parallel_cuda_manual_seed

    same = ps.model_parallel_is_initialized() and (
        ps.get_tensor_model_parallel_world_size(),
        ps.get_pipeline_model_parallel_world_size(),
    ) == (tp, pp)
    # Megatron's groups are children of one default group: a group made since (a trainer
    # run after another in one process) leaves them dangling, so they are made anew.
    stale = _MEGATRON_WORLD.get("world") is not dist.group.WORLD
    if rebuild or stale or not same:
        if ps.model_parallel_is_initialized():
            ps.destroy_model_parallel()
        ps.initialize_model_parallel(tp, pp)
        _MEGATRON_WORLD["world"] = dist.group.WORLD
    if device_type == "cuda" and not get_cuda_rng_tracker().get_states():
        state = torch.cuda.get_rng_state()
        model_parallel_cuda_manual_seed(1234)
        torch.cuda.set_rng_state(state)


def _build_gpt(hf_config: Any, mc: MegatronConfig, padded_vocab: int) -> torch.nn.Module:
    """This rank's ``GPTModel`` (its TP shard of its PP stage), weights left uninitialised."""
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    transformer, gpt = megatron_model_kwargs(hf_config)
    gpt["vocab_size"] = padded_vocab
    pp = mc.pipeline_parallel_size
    config = TransformerConfig(
        **transformer,
        tensor_model_parallel_size=mc.tensor_parallel_size,
        pipeline_model_parallel_size=pp,
        pipeline_dtype=torch.float32,  # what stages send each other (autocast or not)
        params_dtype=torch.float32,
        use_cpu_initialization=True,
        perform_initialization=False,  # the HF weights are copied in right after
        attention_dropout=0.0,
        hidden_dropout=0.0,
        # megatron's fused kernels need CUDA extensions (apex / TE); the plain paths run anywhere
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        # our loss is already normalised by the minibatch's counts: the schedule must not rescale
        calculate_per_token_loss=True,
        # stages send [seq, rows, hidden] of each micro-batch; its rows and length vary
        variable_seq_lengths=pp > 1,
        batch_p2p_comm=False,
    )
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    return GPTModel(
        config=config,
        transformer_layer_spec=spec,
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
        parallel_output=True,  # logits stay split along the vocabulary
        **gpt,
    )


_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")


def _renumber(name: str, offset: int) -> str:
    """A stage-local layer name with its global layer number (offset: layers before it)."""
    return _LAYER.sub(lambda m: f"decoder.layers.{int(m.group(1)) + offset}.", name)


def _split_dim(full: torch.Tensor, param: torch.Tensor) -> int | None:
    """The dim along which ``param`` is a TP slice of ``full``; None when it is replicated.

    Read from the shapes rather than megatron's ``tensor_model_parallel``
    attribute, which layers only set when they initialise their own weights.
    """
    if full.shape == param.shape:
        return None
    dims = [d for d, (a, b) in enumerate(zip(full.shape, param.shape, strict=True)) if a != b]
    if len(dims) != 1:
        raise ValueError(f"megatron shard {tuple(param.shape)} is no slice of {tuple(full.shape)}")
    return dims[0]


def _shard(name: str, full: torch.Tensor, dim: int | None, rank: int, size: int) -> torch.Tensor:
    """This TP rank's slice of the full megatron tensor ``full`` (split along ``dim``)."""
    if dim is None:
        return full
    if GLU_FC1 in name:  # [gate; up] -> [gate_r; up_r]
        return torch.cat([half.chunk(size, 0)[rank] for half in full.chunk(2, 0)])
    return full.chunk(size, dim)[rank]


def _unshard(
    name: str, local: torch.Tensor, dim: int | None, group: Any, size: int
) -> torch.Tensor:
    """The full tensor of a TP slice (a parameter or its gradient), on every rank of ``group``.

    A collective for split tensors; replicated ones (``dim`` None) come back as they are.
    """
    local = local.detach()
    if dim is None:
        return local
    parts = [torch.empty_like(local) for _ in range(size)]
    dist.all_gather(parts, local.contiguous(), group=group)
    if GLU_FC1 in name:
        halves = [p.chunk(2, 0) for p in parts]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves])
    return torch.cat(parts, dim)


class MegatronBackend(RankZeroDriven):
    """The policy as a megatron-core ``GPTModel`` over TP x PP ranks, + AdamW and LR schedule.

    Build it on every rank at the same time (rank 0 through ``make_backend``, the
    others through :func:`serve_main_rank`); rank 0's weights win.

    Args:
        model: a HF causal LM (llama / mistral / qwen2) on this rank's device; it
            is only read (converted, then kept for its config when saving).
        config: optimisation settings; ``config.megatron`` holds the layout.
        pad_id: token id used to pad rows.
        ref_model: optional frozen HF reference model, replicated on every rank.
        lockstep: every rank calls every method itself (SPMD scripts, tests), so
            rank 0 sends no commands; the trainer leaves it False.

    Raises:
        ValueError: an unsupported model or layout (see :func:`check_supported`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: TrainConfig,
        *,
        pad_id: int,
        ref_model: torch.nn.Module | None = None,
        lockstep: bool = False,
    ) -> None:
        from megatron.core import parallel_state as ps

        hf_config: Any = model.config
        self.device = next(model.parameters()).device
        new_group = not dist.is_initialized()  # then any megatron parallel_state is stale
        distributed.init(timeout_s=config.megatron.timeout_s, device=self.device.type)
        check_supported(config, hf_config, distributed.world_size(), self.device.type)
        self._lockstep = lockstep
        self._send("setup", {"ref_model": ref_model is not None, "pad_id": pad_id})
        self.config = config
        self.pad_id = pad_id
        self.rank = distributed.rank()
        self.hf_config = hf_config
        # Rank 0 writes HF folders with it (save_pretrained); its weights are not trained
        # (the trainer's copy of the policy stays allocated: a known memory cost).
        self._hf: Any = model if self.rank == 0 else None
        self._hf_keys = list(model.state_dict())
        mc = config.megatron
        self.tp, self.pp = mc.tensor_parallel_size, mc.pipeline_parallel_size
        _init_model_parallel(self.tp, self.pp, self.device.type, rebuild=new_group)
        self.tp_group = ps.get_tensor_model_parallel_group()
        self.pp_group = ps.get_pipeline_model_parallel_group()
        self.tp_rank = ps.get_tensor_model_parallel_rank()
        self.pp_rank = ps.get_pipeline_model_parallel_rank()
        self.last_stage = ps.is_pipeline_last_stage()
        self.vocab_size = int(hf_config.vocab_size)
        self.padded_vocab = math.ceil(self.vocab_size / self.tp) * self.tp
        self.layer_offset = self.pp_rank * (hf_config.num_hidden_layers // self.pp)
        _broadcast_module(model)
        if ref_model is not None:
            _broadcast_module(ref_model)
        self.ref_model = ref_model
        with cpu_shim(self.device.type):
            self.model = _build_gpt(hf_config, mc, self.padded_vocab).to(self.device)
        self.split_dims: dict[str, int | None] = {}
        """Parameter name -> the dim it is split along over the TP group (None: replicated)."""
        self._load_hf_state(model.state_dict())
        self.optimizer, self.lr_schedule = make_optimizer(self.model.parameters(), config)

    # --- weights: HF <-> this rank's shard ---

    def _load_hf_state(self, hf_state: dict[str, torch.Tensor]) -> None:
        """Copy this rank's shard of a full HF state dict into the megatron parameters."""
        full = hf_to_megatron(hf_state, self.hf_config)
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                key = _renumber(name, self.layer_offset)
                if key not in full:
                    raise ValueError(f"no HF weight maps to megatron parameter {key!r}")
                value = full[key]
                if key in VOCAB_ROWS and self.padded_vocab > self.vocab_size:
                    pad = value.new_zeros(self.padded_vocab - self.vocab_size, *value.shape[1:])
                    value = torch.cat([value, pad])
                if name not in self.split_dims:
                    self.split_dims[name] = _split_dim(value, param)
                value = _shard(name, value, self.split_dims[name], self.tp_rank, self.tp)
                if value.shape != param.shape:
                    raise ValueError(
                        f"{key}: HF weight gives shape {tuple(value.shape)}, this rank's "
                        f"megatron shard is {tuple(param.shape)}"
                    )
                param.copy_(value.to(param.device, param.dtype))

    def _full_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights, gathered (collectives on every rank); HF names on rank 0."""
        return self.gather_hf(dict(self.model.named_parameters()))

    def gather_hf(self, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Full HF-named tensors on rank 0 ({} elsewhere) from per-parameter TP-local ones.

        ``local`` maps each of this rank's parameter names to a tensor of that
        parameter's shape: the parameter itself, or its gradient (the tests compare
        gradients with one device this way). TP shards are all-gathered, PP stages
        all-gathered as objects (through CPU), then converted by ``megatron_to_hf``.
        A collective: every rank calls it with the same names.
        """
        stage: dict[str, torch.Tensor] = {}
        for name, value in local.items():
            full = _unshard(name, value, self.split_dims[name], self.tp_group, self.tp)
            key = _renumber(name, self.layer_offset)
            stage[key] = full[: self.vocab_size] if key in VOCAB_ROWS else full
        if self.pp > 1:  # every stage's TP-gathered tensors to every rank of the PP group
            stages: list[Any] = [None] * self.pp
            dist.all_gather_object(
                stages, {k: v.cpu() for k, v in stage.items()}, group=self.pp_group
            )
            stage = {k: v.to(self.device) for part in stages for k, v in part.items()}
        if self.rank != 0:
            return {}
        hf = megatron_to_hf(stage, self.hf_config)
        if self.hf_config.tie_word_embeddings and "lm_head.weight" in self._hf_keys:
            hf["lm_head.weight"] = hf["model.embed_tokens.weight"]  # as HF's state_dict has it
        return {k: v.clone() for k, v in hf.items()}

    def _save_weights(self, path: str) -> None:
        state = self._full_state_dict()
        if self.rank == 0:
            self._hf.save_pretrained(Path(path), state_dict=state)  # type: ignore[operator]
        distributed.barrier()  # the folder is complete before anyone reads it

    # --- training ---

    def _train_step(
        self, batch: EpisodeBatch, loss_fn: LossFn, rows: list[int]
    ) -> dict[str, float]:
        if not rows:
            raise ValueError("train_step needs at least one row")
        if needs_proximal_logprobs(loss_fn):
            raise ValueError(
                "algorithm.proximal_policy=recompute is not implemented for train.backend="
                "megatron; use algorithm.proximal_policy=loglinear (no extra forward pass)"
            )
        padded = batch.padded(self.pad_id, rows=rows)
        n_mini = min(self.config.ppo_minibatches, len(rows))
        ref = None
        if self.ref_model is not None and self.last_stage:  # only the loss reads it
            ref = self._ref_logprobs(padded)
        stats: dict[str, float] = {}
        self.model.train()
        for idx in torch.arange(len(rows)).chunk(n_mini):  # as TorchBackend cuts them
            self.optimizer.zero_grad(set_to_none=True)
            step_stats = self._accumulate_gradients(padded, idx, ref, loss_fn)
            step_stats["train/grad_norm"] = self._clip_grad()
            self.optimizer.step()
            self.lr_schedule.step()
            for k, v in step_stats.items():
                stats[k] = stats.get(k, 0.0) + v / n_mini
        self.model.eval()
        stats["train/lr"] = float(self.lr_schedule.get_last_lr()[0])
        stats["train/rows"] = float(len(rows))
        return stats

    def _ref_logprobs(self, padded: PaddedBatch) -> torch.Tensor:
        """Logprobs of every row under the replicated HF reference model (no collectives)."""
        assert self.ref_model is not None
        out = torch.zeros(padded.input_ids.shape, dtype=torch.float32)
        share = self.config.share_prompt_prefix
        with torch.no_grad():
            for part in torch.arange(len(out)).split(self.config.micro_batch_size):
                ids = padded.input_ids[part].to(self.device)
                logits = forward_logits(
                    self.ref_model,
                    ids,
                    padded.attention_mask[part].to(self.device),
                    padded.loss_mask[part] if share else None,
                    padded.group_index[part] if share else None,
                    pad_id=self.pad_id,
                )
                temps = padded.temperatures[part].to(self.device)
                out[part] = gather_token_logprobs(logits, ids, temps).cpu()
        return out

    def _accumulate_gradients(
        self, padded: PaddedBatch, idx: torch.Tensor, ref: torch.Tensor | None, loss_fn: LossFn
    ) -> dict[str, float]:
        """Forward/backward minibatch ``idx`` through megatron's schedule; its metrics (all ranks).

        Right padding needs no attention mask beyond the causal one: real tokens
        never attend to the padding after them, and padding is out of the loss.
        """
        mask = padded.loss_mask[idx]
        counts = {"num_tokens": float(mask.sum()), "num_sequences": float((mask.sum(-1) > 0).sum())}
        parts = list(idx.split(self.config.micro_batch_size))
        step = partial(self._forward_step, padded=padded, ref=ref, loss_fn=loss_fn, counts=counts)
        with cpu_shim(self.device.type):
            if self.pp == 1:
                outputs = self._run_micro_batches(step, parts)
            else:
                from megatron.core.pipeline_parallel import get_forward_backward_func

                outputs = get_forward_backward_func()(
                    forward_step_func=step,
                    data_iterator=iter(parts),
                    model=[self.model],
                    num_microbatches=len(parts),
                    seq_length=padded.input_ids.shape[1],
                    micro_batch_size=self.config.micro_batch_size,
                    forward_only=False,
                )
        stats: dict[str, float] = {}
        for part_stats in outputs if self.last_stage else []:
            for k, v in part_stats.items():
                stats[k] = stats.get(k, 0.0) + v
        if self.pp > 1:  # the last stage has the metrics; rank 0 is on the first
            from megatron.core import parallel_state as ps

            box = [stats]
            dist.broadcast_object_list(
                box, src=ps.get_pipeline_model_parallel_last_rank(), group=self.pp_group
            )
            stats = box[0]
        stats["train/entropy"] = stats.pop("_entropy", 0.0) / max(counts["num_tokens"], 1.0)
        return stats

    def _run_micro_batches(
        self, step: Callable[..., Any], parts: list[torch.Tensor]
    ) -> list[dict[str, float]]:
        """PP=1: forward, loss and backward of each micro-batch, one after the other.

        This is what megatron's no-pipelining schedule does; it is not used because
        it allocates a token counter on ``"cuda"`` by name, so it cannot run on CPU.
        The same ``step`` (and loss) serve the pipelined schedule for PP>1.
        """
        data = iter(parts)
        outputs = []
        for _ in parts:
            output, loss_of = step(data, self.model)
            loss, _, stats = loss_of(output)
            loss.backward()
            outputs.append(stats)
        return outputs

    def _forward_step(
        self,
        data_iterator: Iterator[torch.Tensor],
        model: torch.nn.Module,
        *,
        padded: PaddedBatch,
        ref: torch.Tensor | None,
        loss_fn: LossFn,
        counts: dict[str, float],
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
        """The ``forward_step_func`` of megatron's schedule: one micro-batch through this stage."""
        part = next(data_iterator)
        ids = padded.input_ids[part].to(self.device)
        n = ids.shape[1]
        positions = torch.arange(n, device=self.device).unsqueeze(0).expand_as(ids)
        causal = torch.ones(1, 1, n, n, dtype=torch.bool, device=self.device).triu(1)
        autocast = torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.config.megatron.bf16
        )
        with autocast:
            output = model(ids, positions, attention_mask=causal)
        loss = partial(
            self._micro_loss,
            padded=padded,
            part=part,
            ref=ref,
            loss_fn=loss_fn,
            num_tokens=counts["num_tokens"],
            num_sequences=counts["num_sequences"],
        )
        return output, loss

    def _micro_loss(
        self,
        logits: torch.Tensor,
        *,
        padded: PaddedBatch,
        part: torch.Tensor,
        ref: torch.Tensor | None,
        loss_fn: LossFn,
        num_tokens: float,
        num_sequences: float,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """The last stage's loss of one micro-batch from its vocab-split logits [b, s, V/TP].

        The same ``LossInputs`` as ``base.micro_batch_inputs`` builds, except that
        the logprobs come from :func:`vocab_parallel_token_logprobs`.
        """
        dev = self.device
        ids = padded.input_ids[part].to(dev)
        temps = padded.temperatures[part].to(dev)
        inputs = LossInputs(
            logprobs=vocab_parallel_token_logprobs(
                logits, ids, temps, self.tp_group, vocab_size=self.vocab_size
            ),
            behaviour_logprobs=padded.logprobs[part].to(dev),
            advantages=padded.advantages[part].to(dev),
            loss_mask=padded.loss_mask[part].to(dev),
            ref_logprobs=None if ref is None else ref[part].to(dev),
            versions=padded.versions[part].to(dev),
            num_tokens=num_tokens,
            num_sequences=num_sequences,
        )
        loss, metrics = loss_fn(inputs)
        stats = {k: float(v) for k, v in metrics.items()}
        stats["_entropy"] = vocab_parallel_entropy_sum(
            logits, padded.loss_mask[part], temps, self.tp_group, vocab_size=self.vocab_size
        )
        # 3 values + calculate_per_token_loss: the schedule backwards ``loss`` unscaled.
        return loss, torch.ones((), dtype=torch.int, device=dev), stats

    def _clip_grad(self) -> float:
        """Clip by the global gradient norm over every TP shard and PP stage.

        TP-split parameters contribute their shard (summed over the TP group);
        replicated ones (norms, row-parallel biases) hold the same gradient on
        every TP rank and count once.
        """
        split = torch.zeros((), dtype=torch.float32, device=self.device)
        replicated = torch.zeros_like(split)
        grads = [(n, p) for n, p in self.model.named_parameters() if p.grad is not None]
        for name, p in grads:
            sq = p.grad.detach().float().pow(2).sum()  # type: ignore[union-attr]
            if self.split_dims[name] is not None:
                split += sq
            else:
                replicated += sq
        if self.tp > 1:
            dist.all_reduce(split, group=self.tp_group)
        total = split + replicated
        if self.pp > 1:
            dist.all_reduce(total, group=self.pp_group)
        norm = total.sqrt()
        if self.config.grad_clip > 0:
            coef = torch.clamp(self.config.grad_clip / (norm + 1e-6), max=1.0)
            for _, p in grads:
                p.grad.detach().mul_(coef.to(p.grad.dtype))  # type: ignore[union-attr]
        return float(norm)

    # --- checkpoints ---

    def _optim_file(self, root: Path) -> Path:
        return root / f"optim_tp{self.tp_rank}_pp{self.pp_rank}.pt"

    def _save(self, path: str) -> None:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self._save_weights(str(out / "model"))
        torch.save({"optimizer": self.optimizer.state_dict()}, self._optim_file(out))
        if self.rank == 0:
            extra = {"lr_schedule": self.lr_schedule.state_dict(), "layout": (self.tp, self.pp)}
            torch.save(extra, out / EXTRA_FILE)
            if self.ref_model is not None:
                torch.save(self.ref_model.state_dict(), out / REF_FILE)
        distributed.barrier()

    def _load(self, path: str) -> None:
        from safetensors.torch import load_file

        src = Path(path)
        extra = torch.load(src / EXTRA_FILE, map_location="cpu", weights_only=True)
        if tuple(extra["layout"]) != (self.tp, self.pp):
            raise ValueError(
                f"checkpoint {src} was written with (tensor, pipeline) parallel sizes "
                f"{tuple(extra['layout'])}, this run uses {(self.tp, self.pp)} "
                "(train.megatron.*): resuming on another layout is not implemented"
            )
        state: dict[str, torch.Tensor] = {}
        for f in sorted((src / "model").glob("*.safetensors")):
            state.update(load_file(f, device="cpu"))
        self._load_hf_state(state)
        opt = torch.load(self._optim_file(src), map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(opt["optimizer"])
        self.lr_schedule.load_state_dict(extra["lr_schedule"])
        if self.ref_model is not None and (src / REF_FILE).exists():
            ref = torch.load(src / REF_FILE, map_location=self.device, weights_only=True)
            self.ref_model.load_state_dict(ref)


def serve_main_rank(cfg: Any) -> None:
    """What a rank other than 0 runs: its MegatronBackend follows rank 0 (``follow_rank_zero``)."""
    follow_rank_zero(cfg, MegatronBackend)
