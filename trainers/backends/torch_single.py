"""Single-device training backend: one model and one AdamW on CPU, CUDA or NPU.

``train_step`` splits the rows it is given into ``ppo_minibatches`` minibatches
and takes one optimizer step per minibatch, accumulating gradients over
micro-batches of ``micro_batch_size`` rows. Every micro-batch's loss is
normalised by the token and sequence counts of its whole minibatch
(``LossInputs.num_tokens`` / ``num_sequences``), so the accumulated gradient is
the minibatch's gradient whatever the micro-batch size (a test compares them).
Each row is scored at the temperature its sample was drawn with.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from areal_env.trainers.algorithms.losses.base import LossFn, LossInputs
from areal_env.trainers.backends.base import (
    TrainConfig,
    gather_token_logprobs,
    masked_entropy_sum,
)
from areal_env.trainers.backends.prefix_sharing import forward_logits
from areal_env.types import EpisodeBatch, PaddedBatch


class TorchBackend:
    """Trainable model + optimizer + LR schedule on one device.

    Args:
        model: a HF causal LM, already on its device.
        config: optimisation settings.
        pad_id: token id used to pad rows.
        ref_model: optional frozen reference model for a KL penalty.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: TrainConfig,
        *,
        pad_id: int,
        ref_model: torch.nn.Module | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.pad_id = pad_id
        self.ref_model = ref_model
        self.device = next(model.parameters()).device
        self.optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=config.lr,
            betas=config.betas,
            weight_decay=config.weight_decay,
        )
        warm = max(config.warmup_steps, 1)
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warm)
        )

    def token_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        model: torch.nn.Module | None = None,
        *,
        temperatures: torch.Tensor | float = 1.0,
        loss_mask: torch.Tensor | None = None,
        group_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, L] logprobs of each token under ``model`` (default: the policy), no grad.

        With ``loss_mask`` and ``group_index`` (and ``share_prompt_prefix``), rows
        of a group share their prompt's forward, and only the positions the loss
        mask marks are guaranteed exact (the others are not computed).

        Args:
            input_ids: [B, L] right-padded rows.
            attention_mask: [B, L] 1 on real tokens.
            model: the model to score with; the policy when None.
            temperatures: [B] (or one float) temperature each row was sampled at.
            loss_mask: [B, L] the positions that must be exact.
            group_index: [B] rows that may share a prompt.
        """
        model = model or self.model
        temps = torch.as_tensor(temperatures, dtype=torch.float32).expand(input_ids.shape[0])
        out = torch.zeros(input_ids.shape, dtype=torch.float32)
        with torch.no_grad():
            for sl in self._micro_slices(input_ids.shape[0]):
                ids = input_ids[sl].to(self.device)
                logits = self._logits(
                    model,
                    ids,
                    attention_mask[sl],
                    None if loss_mask is None else loss_mask[sl],
                    None if group_index is None else group_index[sl],
                )
                out[sl] = gather_token_logprobs(logits, ids, temps[sl]).cpu()
        return out

    def _logits(
        self,
        model: torch.nn.Module,
        ids: torch.Tensor,
        attention_mask: torch.Tensor,
        loss_mask: torch.Tensor | None,
        group_index: torch.Tensor | None,
    ) -> torch.Tensor:
        attn = attention_mask.to(self.device)
        if not self.config.share_prompt_prefix:
            return model(input_ids=ids, attention_mask=attn).logits
        # Without loss_mask/group_index this is the plain forward too.
        return forward_logits(model, ids, attn, loss_mask, group_index, pad_id=self.pad_id)

    def train_step(self, batch: EpisodeBatch, loss_fn: LossFn, rows: list[int]) -> dict[str, float]:
        """One update over ``rows`` (indices into ``batch.row_refs()``).

        Rows are usually those with a non-zero advantage: a group whose rewards
        are all equal carries no gradient and is skipped by the caller.
        """
        if not rows:
            raise ValueError("train_step needs at least one row")
        padded = batch.padded(self.pad_id, rows=rows)
        ref = None
        if self.ref_model is not None:
            ref = self.token_logprobs(
                padded.input_ids,
                padded.attention_mask,
                self.ref_model,
                temperatures=padded.temperatures,
                loss_mask=padded.loss_mask,
                group_index=padded.group_index,
            )
        n_mini = min(self.config.ppo_minibatches, len(rows))
        stats: dict[str, float] = {}
        self.model.train()
        for idx in torch.arange(len(rows)).chunk(n_mini):
            step_stats = self._minibatch_step(padded, idx, ref, loss_fn)
            for k, v in step_stats.items():
                stats[k] = stats.get(k, 0.0) + v / n_mini
        self.model.eval()
        stats["train/lr"] = self.lr_schedule.get_last_lr()[0]
        stats["train/rows"] = float(len(rows))
        return stats

    def accumulate_gradients(
        self,
        padded: PaddedBatch,
        idx: torch.Tensor,
        ref: torch.Tensor | None,
        loss_fn: LossFn,
    ) -> dict[str, float]:
        """Backward the loss of minibatch ``idx`` micro-batch by micro-batch; its metrics.

        Gradients are added to ``.grad`` (no optimizer step): the sum over
        micro-batches is the minibatch's gradient, because every micro-batch is
        normalised by the minibatch's token and sequence counts.
        """
        mask = padded.loss_mask[idx]
        num_tokens = float(mask.sum())
        num_sequences = float((mask.sum(-1) > 0).sum())
        stats: dict[str, float] = {}
        entropy = 0.0
        for sl in self._micro_slices(len(idx)):
            part = idx[sl]
            ids = padded.input_ids[part].to(self.device)
            part_mask = padded.loss_mask[part]
            temps = padded.temperatures[part].to(self.device)
            logits = self._logits(
                self.model, ids, padded.attention_mask[part], part_mask, padded.group_index[part]
            )
            # Position t scores token t; the mask marks generated tokens.
            inputs = LossInputs(
                logprobs=gather_token_logprobs(logits, ids, temps),
                behaviour_logprobs=padded.logprobs[part].to(self.device),
                advantages=padded.advantages[part].to(self.device),
                loss_mask=part_mask.to(self.device),
                ref_logprobs=None if ref is None else ref[part].to(self.device),
                versions=padded.versions[part].to(self.device),
                num_tokens=num_tokens,
                num_sequences=num_sequences,
            )
            loss, metrics = loss_fn(inputs)
            loss.backward()
            entropy += masked_entropy_sum(logits, part_mask, temps)
            for k, v in metrics.items():
                stats[k] = stats.get(k, 0.0) + v
        stats["train/entropy"] = entropy / max(num_tokens, 1.0)
        return stats

    def _minibatch_step(
        self, padded: PaddedBatch, idx: torch.Tensor, ref: torch.Tensor | None, loss_fn: LossFn
    ) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        stats = self.accumulate_gradients(padded, idx, ref, loss_fn)
        stats["train/grad_norm"] = self._clip_grad()
        self.optimizer.step()
        self.lr_schedule.step()
        return stats

    def _clip_grad(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def _micro_slices(self, n: int) -> list[slice]:
        step = self.config.micro_batch_size
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]

    def weights_for_sync(self) -> dict[str, torch.Tensor]:
        """The policy's state dict (tensors are shared, not copied)."""
        return {k: v.detach() for k, v in self.model.state_dict().items()}

    def save_weights(self, path: str) -> None:
        """The policy's weights as an HF folder (safetensors + config), for servers."""
        self.model.save_pretrained(Path(path))

    def save(self, path: str) -> None:
        """Model in HF format plus optimizer and LR-schedule state."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out / "model")
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
                "lr_schedule": self.lr_schedule.state_dict(),
            },
            out / "optimizer.pt",
        )
        if self.ref_model is not None:
            torch.save(self.ref_model.state_dict(), out / "ref_model.pt")

    def load(self, path: str) -> None:
        """Restore model, optimizer, LR schedule and reference model from :meth:`save`."""
        from safetensors.torch import load_file

        src = Path(path)
        state = {}
        for f in sorted((src / "model").glob("*.safetensors")):
            state.update(load_file(f, device=str(self.device)))
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:
            raise ValueError(f"checkpoint {src} does not match the model: {missing} {unexpected}")
        opt = torch.load(src / "optimizer.pt", map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(opt["optimizer"])
        self.lr_schedule.load_state_dict(opt["lr_schedule"])
        ref_file = src / "ref_model.pt"
        if self.ref_model is not None and ref_file.exists():
            ref_state = torch.load(ref_file, map_location=self.device, weights_only=True)
            self.ref_model.load_state_dict(ref_state)
