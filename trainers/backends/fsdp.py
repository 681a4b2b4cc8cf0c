"""FSDP2 training backend (``train.backend=fsdp``): the policy sharded over torchrun's ranks.

How the ranks work together (see also ``docs/distributed.md``):

* Rank 0 runs the trainer (rollouts, warm start, metrics, checkpoint files) and
  calls this backend as any other. Each call that needs every rank first sends
  the call to the others (:func:`areal_env.trainers.distributed.send`); they sit
  in :meth:`FSDPBackend.follow`, run the same call with the same arguments
  (the batch travels with it) and go back to waiting. So every rank holds the
  whole batch.
* Each minibatch is cut as on one device (``TorchBackend``: ``ppo_minibatches``
  chunks of the trained rows), then each minibatch's rows are split over the
  ranks (``tensor_split``: 5 rows on 2 ranks are 3 + 2). Every rank normalises
  its loss by the token and sequence counts of the WHOLE minibatch, which it
  can count locally because it holds the whole batch; the sum over ranks of
  the per-rank gradients is then the one-device gradient. FSDP's
  reduce-scatter averages over ranks, so each rank's loss is scaled by the
  number of ranks to turn that mean into the sum.
* FSDP2 runs collectives in every forward and backward, so every rank must run
  the same number of them: ranks with fewer micro-batches (or no rows) run
  zero-weighted passes on a row of the minibatch. For the same reason the
  policy always takes the plain forward here (``share_prompt_prefix`` picks a
  data-dependent number of forwards); the frozen reference model is not
  sharded and still shares prompt prefixes.
* Weight sync gathers the full state dict collectively (``DTensor.full_tensor``)
  and keeps it on rank 0 only. Checkpoints are ``torch.distributed.checkpoint``
  folders (model + AdamW state), which load onto any number of ranks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from areal_env.trainers import distributed
from areal_env.trainers.algorithms.losses.base import LossFn
from areal_env.trainers.backends.base import (
    TrainConfig,
    gather_token_logprobs,
    make_optimizer,
    masked_entropy_sum,
    micro_batch_inputs,
    needs_proximal_logprobs,
)
from areal_env.trainers.backends.prefix_sharing import forward_logits
from areal_env.trainers.backends.rank_driven import RankZeroDriven, follow_rank_zero
from areal_env.types import EpisodeBatch, PaddedBatch

EXTRA_FILE = "backend_extra.pt"
"""Beside the DCP shards: LR schedule, rank count at save (rank 0 writes it)."""
REF_FILE = "ref_model.pt"
"""The frozen reference model's state dict (replicated, so rank 0 writes it)."""


def check_supported(config: TrainConfig) -> None:
    """Fail early on settings this backend does not implement.

    Raises:
        ValueError: LoRA with FSDP (the adapters are not sharded here).
    """
    lora = getattr(config, "lora", None)
    if lora is not None and getattr(lora, "rank", 0) > 0:
        raise ValueError("train.lora.rank > 0 is not supported with train.backend=fsdp")


def shard_model(model: torch.nn.Module, config: TrainConfig) -> None:
    """Apply FSDP2 in place: each decoder layer, then the root.

    Sharding layers one by one keeps only one layer's full weights in memory at
    a time. Decoder layers are found at ``model.model.layers`` (HF Llama, Qwen2,
    Mistral...); other models are sharded as one unit.
    """
    opts = config.fsdp
    if opts.activation_checkpointing:
        # Non-reentrant checkpointing is the variant that composes with FSDP2's hooks.
        model.gradient_checkpointing_enable(  # type: ignore[operator]
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    mp = MixedPrecisionPolicy()
    if opts.mixed_precision == "bf16":
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (distributed.world_size(),))
    layers = getattr(getattr(model, "model", None), "layers", None)
    for layer in layers if isinstance(layers, torch.nn.ModuleList) else []:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)


def _broadcast_module(module: torch.nn.Module) -> None:
    """Overwrite ``module``'s parameters and buffers with rank 0's (e.g. warm-started)."""
    if distributed.world_size() == 1:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


class FSDPBackend(RankZeroDriven):
    """Trainable model sharded with FSDP2 over all ranks, + AdamW and LR schedule.

    Build it on every rank at the same time (rank 0 through ``make_backend``, the
    others through :func:`serve_main_rank`); rank 0's weights win.

    Args:
        model: a HF causal LM on this rank's device (rank 0's copy may be warm-started).
        config: optimisation settings; ``config.fsdp`` holds the FSDP options.
        pad_id: token id used to pad rows.
        ref_model: optional frozen reference model (replicated on every rank).
        lockstep: every rank calls every method itself (SPMD scripts, tests), so
            rank 0 sends no commands; the trainer leaves it False.
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
        check_supported(config)
        distributed.init(
            timeout_s=config.fsdp.timeout_s, device=next(model.parameters()).device.type
        )
        self._lockstep = lockstep
        self._send("setup", {"ref_model": ref_model is not None, "pad_id": pad_id})
        self.config = config
        self.pad_id = pad_id
        self.rank = distributed.rank()
        self.world = distributed.world_size()
        self.device = next(model.parameters()).device
        _broadcast_module(model)
        if ref_model is not None:
            _broadcast_module(ref_model)
        shard_model(model, config)
        self.model = model
        self.ref_model = ref_model
        self.optimizer, self.lr_schedule = make_optimizer(model.parameters(), config)

    # --- the collective work, run by every rank ---

    def _train_step(
        self, batch: EpisodeBatch, loss_fn: LossFn, rows: list[int]
    ) -> dict[str, float]:
        if not rows:
            raise ValueError("train_step needs at least one row")
        padded = batch.padded(self.pad_id, rows=rows)
        n_mini = min(self.config.ppo_minibatches, len(rows))
        minibatches = list(torch.arange(len(rows)).chunk(n_mini))  # as TorchBackend cuts them
        ref = None
        if self.ref_model is not None:
            mine = torch.cat([self._my_rows(idx) for idx in minibatches])
            ref = self._ref_logprobs(padded, mine)
        prox = None
        if needs_proximal_logprobs(loss_fn):  # decoupled PPO: the weights before any update
            prox = self._policy_logprobs(padded, minibatches)
        stats: dict[str, float] = {}
        self.model.train()
        for idx in minibatches:
            self.optimizer.zero_grad(set_to_none=True)
            step_stats = self._accumulate_gradients(padded, idx, ref, loss_fn, prox)
            step_stats["train/grad_norm"] = self._clip_grad()
            self.optimizer.step()
            self.lr_schedule.step()
            for k, v in step_stats.items():
                stats[k] = stats.get(k, 0.0) + v / n_mini
        self.model.eval()
        stats["train/lr"] = float(self.lr_schedule.get_last_lr()[0])
        stats["train/rows"] = float(len(rows))
        return stats

    def _my_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's share of minibatch ``idx`` (uneven splits: earlier ranks get more)."""
        return idx.tensor_split(self.world)[self.rank]

    def _ref_logprobs(self, padded: PaddedBatch, mine: torch.Tensor) -> torch.Tensor:
        """Reference logprobs of this rank's rows (zeros elsewhere: never read)."""
        assert self.ref_model is not None
        out = torch.zeros(padded.input_ids.shape, dtype=torch.float32)
        share = self.config.share_prompt_prefix  # the replicated ref model has no collectives
        with torch.no_grad():
            for part in mine.split(self.config.micro_batch_size):
                ids = padded.input_ids[part].to(self.device)
                attn = padded.attention_mask[part].to(self.device)
                logits = forward_logits(
                    self.ref_model,
                    ids,
                    attn,
                    padded.loss_mask[part] if share else None,
                    padded.group_index[part] if share else None,
                    pad_id=self.pad_id,
                )
                temps = padded.temperatures[part].to(self.device)
                out[part] = gather_token_logprobs(logits, ids, temps).cpu()
        return out

    def _policy_logprobs(
        self, padded: PaddedBatch, minibatches: list[torch.Tensor]
    ) -> torch.Tensor:
        """The sharded policy's logprobs of this rank's rows, no grad (zeros elsewhere).

        Every rank runs the same number of forwards (the sharded forward gathers
        parameters collectively), a rank without rows scoring a dummy one.
        """
        out = torch.zeros(padded.input_ids.shape, dtype=torch.float32)
        size = self.config.micro_batch_size
        with torch.no_grad():
            for idx in minibatches:
                shares = idx.tensor_split(self.world)
                n_micro = max(math.ceil(len(s) / size) for s in shares)
                mine = shares[self.rank]
                for m in range(n_micro):
                    part = mine[m * size : (m + 1) * size]
                    rows = part if len(part) else idx[:1]
                    ids = padded.input_ids[rows].to(self.device)
                    attn = padded.attention_mask[rows].to(self.device)
                    logits = self.model(input_ids=ids, attention_mask=attn).logits
                    if len(part):
                        temps = padded.temperatures[part].to(self.device)
                        out[part] = gather_token_logprobs(logits, ids, temps).cpu()
        return out

    def _accumulate_gradients(
        self,
        padded: PaddedBatch,
        idx: torch.Tensor,
        ref: torch.Tensor | None,
        loss_fn: LossFn,
        prox: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """Backward this rank's rows of minibatch ``idx``; the minibatch's metrics (all ranks).

        The counts are those of the whole minibatch (every rank holds the whole
        batch), so per-rank losses add up to the one-device loss.
        """
        mask = padded.loss_mask[idx]
        num_tokens = float(mask.sum())
        num_sequences = float((mask.sum(-1) > 0).sum())
        size = self.config.micro_batch_size
        shares = idx.tensor_split(self.world)
        n_micro = max(math.ceil(len(s) / size) for s in shares)  # the same on every rank
        mine = shares[self.rank]
        stats: dict[str, float] = {}
        entropy = 0.0
        for m in range(n_micro):
            part = mine[m * size : (m + 1) * size]
            if len(part) == 0:
                self._idle_pass(padded, idx[:1])
                continue
            ids = padded.input_ids[part].to(self.device)
            attn = padded.attention_mask[part].to(self.device)
            part_mask = padded.loss_mask[part]
            temps = padded.temperatures[part].to(self.device)
            logits = self.model(input_ids=ids, attention_mask=attn).logits
            inputs = micro_batch_inputs(
                padded,
                part,
                logits,
                ref_logprobs=ref,
                num_tokens=num_tokens,
                num_sequences=num_sequences,
                device=self.device,
                proximal_logprobs=prox,
            )
            loss, metrics = loss_fn(inputs)
            # FSDP's reduce-scatter divides by the rank count; we want the sum.
            (loss * self.world).backward()
            entropy += masked_entropy_sum(logits, part_mask, temps)
            for k, v in metrics.items():
                stats[k] = stats.get(k, 0.0) + float(v)
        stats["train/entropy"] = entropy
        stats = self._sum_over_ranks(stats)
        stats["train/entropy"] /= max(num_tokens, 1.0)
        return stats

    def _idle_pass(self, padded: PaddedBatch, row: torch.Tensor) -> None:
        """A zero-weighted forward/backward: this rank's part in the others' collectives."""
        ids = padded.input_ids[row].to(self.device)
        attn = padded.attention_mask[row].to(self.device)
        logits = self.model(input_ids=ids, attention_mask=attn).logits
        (logits.sum() * 0.0).backward()

    def _sum_over_ranks(self, stats: dict[str, float]) -> dict[str, float]:
        """Metrics of the whole minibatch: each rank's sums, added (ranks may lack keys)."""
        if self.world == 1:
            return stats
        gathered: list[dict[str, float] | None] = [None] * self.world
        dist.all_gather_object(gathered, stats)
        total: dict[str, float] = {}
        for part in gathered:
            for k, v in (part or {}).items():
                total[k] = total.get(k, 0.0) + v
        return total

    def _clip_grad(self) -> float:
        """Clip by the global norm (DTensor-aware: the norm covers every shard)."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        return float(norm)

    def _full_state_dict(self) -> dict[str, torch.Tensor]:
        """Gather every tensor (a collective, in the same order on every rank); keep on rank 0."""
        out: dict[str, torch.Tensor] = {}
        for k, v in self.model.state_dict().items():
            full = v.full_tensor() if isinstance(v, DTensor) else v
            if self.rank == 0:
                out[k] = full.detach()
        return out

    def _save_weights(self, path: str) -> None:
        state = self._full_state_dict()
        if self.rank == 0:
            self.model.save_pretrained(Path(path), state_dict=state)  # type: ignore[operator]
        distributed.barrier()  # the folder is complete before anyone reads it

    def _save(self, path: str) -> None:
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(out))
        if self.rank == 0:
            extra = {"lr_schedule": self.lr_schedule.state_dict(), "world_size": self.world}
            torch.save(extra, out / EXTRA_FILE)
            if self.ref_model is not None:
                torch.save(self.ref_model.state_dict(), out / REF_FILE)
        distributed.barrier()

    def _load(self, path: str) -> None:
        src = Path(path)
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        # DCP fills these dicts in place, each rank reading its own shards (resharding
        # when the checkpoint was written by another number of ranks).
        dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(src))
        set_state_dict(
            self.model, self.optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd
        )
        extra = torch.load(src / EXTRA_FILE, map_location="cpu", weights_only=True)
        self.lr_schedule.load_state_dict(extra["lr_schedule"])
        if self.ref_model is not None and (src / REF_FILE).exists():
            ref = torch.load(src / REF_FILE, map_location=self.device, weights_only=True)
            self.ref_model.load_state_dict(ref)


def serve_main_rank(cfg: Any) -> None:
    """What a rank other than 0 runs: its FSDPBackend follows rank 0 (``follow_rank_zero``)."""
    follow_rank_zero(cfg, FSDPBackend)
