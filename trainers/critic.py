"""The critic of PPO: a value model trained by regression on GAE returns.

PPO (Schulman et al. 2017, https://arxiv.org/abs/1707.06347) learns a state-value
function ``V`` beside the policy; GAE (Schulman et al. 2016,
https://arxiv.org/abs/1506.02438) turns its estimates into per-token advantages
(``algorithms/gae.py``). Here the value model is a copy of the policy's transformer
(its weights at the start of RL: the warm-started ones) topped by a scalar head,
``torch.nn.Linear(hidden, 1)``, as in InstructGPT (Ouyang et al. 2022) where the
value model starts from a trained LM. Starting from the policy gives the critic
features that already read the task; a fresh network would first have to learn
language.

The value of token ``t`` is the head on the hidden state at ``t - 1``: the state
*before* the token is sampled, aligned the way ``gather_token_logprobs`` aligns a
token's logprob, so ``values[:, t]`` sits beside ``loss_mask[:, t]``.

The critic has its own AdamW and learning-rate warm-up and takes
``critic.minibatches`` optimizer steps per batch, with gradients accumulated over
micro-batches of ``micro_batch_size`` rows; every micro-batch's loss is divided by
the token count of its whole minibatch, so the accumulated gradient does not depend
on the micro-batch size (as in the policy backends). It runs on the policy's
device only: with FSDP the value model would need its own shards, which are not
built (``PPOConfig`` refuses ``train.backend != "torch"``).

Example:
    >>> import torch
    >>> v, old, ret = torch.tensor([[0.5, 1.0]]), torch.tensor([[0.4, 0.4]]), torch.ones(1, 2)
    >>> round(clipped_value_loss(v, old, ret, torch.ones(1, 2), value_clip=0.2)[0].item(), 4)
    0.1025
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from areal_env.types import EpisodeBatch, PaddedBatch


@dataclass(kw_only=True, slots=True)
class CriticConfig:
    """The value model's optimisation and the GAE it feeds.

    There is no value-loss coefficient: critic and policy share no parameter and each
    has its own AdamW, so a weight on the value loss would only rescale gradients that
    Adam normalises anyway (it would matter through ``grad_clip`` alone); ``lr`` is
    the knob.
    """

    lr: float = 1e-3
    """Peak AdamW learning rate of the value model."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up of the value model, in its optimizer steps."""
    weight_decay: float = 0.0
    """AdamW weight decay of the value model."""
    grad_clip: float = 1.0
    """Max global gradient norm of the value model; 0 disables clipping."""
    minibatches: int = 2
    """Value-model optimizer steps per batch: its rows are split into this many."""
    micro_batch_size: int = 256
    """Rows per forward/backward pass of the value model."""
    value_clip: float = 0.2
    """PPO's value clipping: a value may move at most this far from the one that
    computed the advantages before the loss stops pulling it (the larger of the clipped
    and unclipped squared errors is used); 0 turns it off."""
    gamma: float = 1.0
    """GAE discount per generated token; 1 because the reward comes once, at the end,
    and answers are short."""
    lam: float = 0.95
    """GAE trace parameter: 0 is the one-step TD error (low variance, biased by the
    critic), 1 the Monte-Carlo return minus the value."""
    whiten_advantages: bool = True
    """Shift and scale the batch's token advantages to mean 0, std 1 before the
    policy loss (as OpenAI baselines' PPO does); value targets are not whitened."""

    def __post_init__(self) -> None:
        for key in ("lr",):
            if getattr(self, key) <= 0:
                raise ValueError(f"critic.{key} must be > 0, got {getattr(self, key)}")
        for key in ("warmup_steps", "weight_decay", "grad_clip", "value_clip"):
            if getattr(self, key) < 0:
                raise ValueError(f"critic.{key} must be >= 0, got {getattr(self, key)}")
        for key in ("minibatches", "micro_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"critic.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("gamma", "lam"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"critic.{key} must be in [0, 1], got {getattr(self, key)}")


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    value_clip: float,
    num_tokens: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped value loss, summed over masked tokens and divided by ``num_tokens``.

    Per token, with ``v`` the current value, ``v_old`` the one the advantages were
    computed with and ``R`` the return (the implementation of the PPO paper's
    experiments, OpenAI baselines ppo2)::

        v_clip = v_old + clamp(v - v_old, -value_clip, value_clip)
        loss_t = 0.5 * max((v - R)^2, (v_clip - R)^2)

    Like the policy's ratio clip it keeps one batch from dragging the critic far from
    where it stood; a token whose clipped error is the larger gets no gradient.

    Args:
        values: [B, T] current values (with gradient).
        old_values: [B, T] values before this batch's updates.
        returns: [B, T] GAE value targets.
        loss_mask: [B, T] 1 on the tokens that count.
        value_clip: the clip range; 0 is the plain squared error.
        num_tokens: the token normaliser, the whole minibatch's count of masked tokens
            across micro-batches; None: this micro-batch's.

    Returns:
        ([] loss, metrics): ``critic/loss`` (the same number), ``critic/clip_frac`` (share
        of tokens whose clipped error was used, normalised like the loss) and
        ``critic/value_error`` (mean absolute error ``|v - R|``, normalised alike).
    """
    mask = loss_mask.to(values.dtype)
    count = float(mask.sum()) if num_tokens is None else num_tokens
    count = max(count, 1.0)
    old = old_values.detach().to(values.dtype)
    ret = returns.detach().to(values.dtype)
    err = (values - ret) ** 2
    if value_clip > 0:
        clipped = old + (values - old).clamp(-value_clip, value_clip)
        err_clipped = (clipped - ret) ** 2
        is_clipped = err_clipped > err
        err = torch.maximum(err, err_clipped)
    else:
        is_clipped = torch.zeros_like(mask, dtype=torch.bool)
    loss = 0.5 * (err * mask).sum() / count
    with torch.no_grad():
        stats = torch.stack(
            [
                loss.detach(),
                (is_clipped.to(mask.dtype) * mask).sum() / count,
                ((values - ret).abs() * mask).sum() / count,
            ]
        ).tolist()
    names = ("critic/loss", "critic/clip_frac", "critic/value_error")
    return loss, dict(zip(names, stats, strict=True))


class ValueModel(torch.nn.Module):
    """A transformer body plus a scalar head: ``[B, L]`` ids -> ``[B, L]`` values.

    Args:
        body: a HF base model (no LM head) whose output has ``last_hidden_state``.
        hidden_size: its hidden width.
    """

    def __init__(self, body: torch.nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.body = body
        self.head = torch.nn.Linear(hidden_size, 1)
        # A zero head predicts 0 for every state at first: no random value noise in the
        # first advantages, and the body's features are kept until the head has a use.
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, L] float32 values; position ``t`` is the value of the state before token ``t``.

        Position 0 (nothing precedes the first token, and it is never generated) is 0.
        """
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        v = self.head(hidden).squeeze(-1).float()
        return torch.nn.functional.pad(v[:, :-1], (1, 0), value=0.0)


class Critic:
    """The value model of PPO with its optimizer, on the policy's device.

    Args:
        policy: the HF causal LM whose transformer (``policy.base_model``) is copied,
            at its current weights (call after the warm start).
        config: the critic's settings.
        pad_id: token id used to pad rows.
        betas: AdamW betas (the policy's, ``train.betas``).
    """

    def __init__(
        self,
        policy: torch.nn.Module,
        config: CriticConfig,
        *,
        pad_id: int,
        betas: tuple[float, float] = (0.9, 0.999),
    ) -> None:
        hf: Any = policy  # a transformers PreTrainedModel (nn.Module's typing hides it)
        body = copy.deepcopy(hf.base_model)
        body.requires_grad_(True)
        self.device = next(policy.parameters()).device
        self.model = ValueModel(body, int(hf.config.hidden_size)).to(self.device)
        self.model.eval()
        self.config = config
        self.pad_id = pad_id
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, betas=betas, weight_decay=config.weight_decay
        )
        warm = max(config.warmup_steps, 1)
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warm)
        )

    def _slices(self, n: int) -> list[slice]:
        step = self.config.micro_batch_size
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]

    def _forward(self, padded: PaddedBatch, part: slice | torch.Tensor) -> torch.Tensor:
        ids = padded.input_ids[part].to(self.device)
        attn = padded.attention_mask[part].to(self.device)
        return self.model(ids, attn)

    def values(self, batch: EpisodeBatch, rows: list[int]) -> torch.Tensor:
        """[R, L] values of ``rows`` (indices into ``batch.row_refs()``), no gradient.

        Aligned with ``batch.padded(pad_id, rows=rows)``: CPU float32, 0 at position 0;
        read them only where the loss mask is 1.
        """
        padded = batch.padded(self.pad_id, rows=rows)
        out = torch.zeros(padded.input_ids.shape, dtype=torch.float32)
        self.model.eval()
        with torch.no_grad():
            for sl in self._slices(len(rows)):
                out[sl] = self._forward(padded, sl).cpu()
        return out

    def train_step(
        self,
        batch: EpisodeBatch,
        rows: list[int],
        returns: torch.Tensor,
        old_values: torch.Tensor,
    ) -> dict[str, float]:
        """Regress the values of ``rows`` on ``returns``: ``critic.minibatches`` steps.

        Args:
            batch: the episodes.
            rows: indices into ``batch.row_refs()``.
            returns: [R, L] value targets, aligned with ``batch.padded(pad_id, rows)``.
            old_values: [R, L] the values the targets were computed with (the clip's anchor).

        Returns:
            Metrics averaged over the minibatches: ``critic/loss``, ``critic/clip_frac``,
            ``critic/value_error``, ``critic/grad_norm``, plus ``critic/lr``.

        Raises:
            ValueError: with no rows, or targets not shaped like the rows.
        """
        if not rows:
            raise ValueError("Critic.train_step needs at least one row")
        padded = batch.padded(self.pad_id, rows=rows)
        shape = padded.input_ids.shape
        if returns.shape != shape or old_values.shape != shape:
            raise ValueError(
                f"returns and old_values must be [R, L] = {tuple(shape)}, got "
                f"{tuple(returns.shape)} and {tuple(old_values.shape)}"
            )
        n_mini = min(self.config.minibatches, len(rows))
        stats: dict[str, float] = {}
        self.model.train()
        for idx in torch.arange(len(rows)).chunk(n_mini):
            self.optimizer.zero_grad(set_to_none=True)
            num_tokens = float(padded.loss_mask[idx].sum())
            for sl in self._slices(len(idx)):
                part = idx[sl]
                loss, metrics = clipped_value_loss(
                    self._forward(padded, part),
                    old_values[part].to(self.device),
                    returns[part].to(self.device),
                    padded.loss_mask[part].to(self.device),
                    value_clip=self.config.value_clip,
                    num_tokens=num_tokens,
                )
                loss.backward()
                for k, v in metrics.items():
                    stats[k] = stats.get(k, 0.0) + v / n_mini
            max_norm = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
            stats["critic/grad_norm"] = stats.get("critic/grad_norm", 0.0) + float(norm) / n_mini
            self.optimizer.step()
            self.lr_schedule.step()
        self.model.eval()
        stats["critic/lr"] = float(self.lr_schedule.get_last_lr()[0])
        return stats

    def save(self, path: str) -> None:
        """Write the value model, its optimizer and LR schedule under ``path``."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "lr_schedule": self.lr_schedule.state_dict(),
            },
            out / "critic.pt",
        )

    def load(self, path: str) -> None:
        """Restore what :meth:`save` wrote.

        Raises:
            ValueError: when ``path`` holds no critic (e.g. a GRPO checkpoint).
        """
        file = Path(path) / "critic.pt"
        if not file.exists():
            raise ValueError(
                f"{path} holds no critic state (critic.pt): was the checkpoint written by "
                "trainers/ppo.py?"
            )
        state = torch.load(file, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
