"""Decoupled PPO: the objective AReaL uses to stay stable on stale samples.

In asynchronous RL a batch mixes tokens sampled by several older policies. Plain
PPO takes its ratio against the behaviour policy ``pi_behav`` that sampled each
token, so the trust region is centred on whichever stale policy that was, and the
staler a token, the further the update may move from the current weights.
Decoupled PPO (Fu et al. 2025, "AReaL", https://arxiv.org/abs/2505.24298, eq. 5)
separates the two roles of ``pi_old``:

* the *proximal* policy ``pi_prox``, the weights at the start of this train step,
  centres the clipped ratio ``r = pi / pi_prox``, so every step moves a bounded
  distance from the current policy however stale the data;
* the behaviour policy enters only as the detached importance weight
  ``w = pi_prox / pi_behav`` that corrects for sampling from it; tokens whose ``w``
  exceeds ``algorithm.behaviour_weight_cap`` are dropped (weight 0, still counted
  in the normalisers) and counted in ``loss/behav_dropped_frac``.

Two ways to get ``pi_prox`` (``algorithm.proximal_policy``):

* ``recompute``: a no-grad forward pass of the current weights over the batch
  before the first update (exact; one extra forward per step). The backend does it
  when the loss asks (``needs_proximal_logprobs``).
* ``loglinear``: AReaL's approximation without that forward pass: interpolate in
  log space between the behaviour logprob and the current one by how far the
  token's version is from the proximal version::

      alpha = (v_prox - v_behav) / (v_prox + 1 - v_behav)
      log pi_prox ~= log pi_behav + alpha * (log pi - log pi_behav)

  A token sampled by the current weights (``v_behav == v_prox``) gets
  ``alpha = 0``, its exact value; a very stale one gets ``alpha -> 1``, the current
  policy. Where ours departs from AReaL: ``log pi`` is this micro-batch's own
  (detached) logprob at the moment the loss runs, so in later PPO minibatches of a
  step it already includes that step's earlier updates.

``none`` keeps plain PPO (ratio against the behaviour policy).

Example:
    >>> import torch
    >>> behav = torch.tensor([[-1.0, -1.0, -1.0]])
    >>> current = torch.tensor([[-2.0, -2.0, -2.0]])
    >>> versions = torch.tensor([[3, 2, 0]])  # on-policy, 1 and 3 versions stale
    >>> loglinear_proximal(behav, current, versions, proximal_version=3)
    tensor([[-1.0000, -1.5000, -1.7500]])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from areal_env.trainers.algorithms.losses.base import LossFn, LossInputs
from areal_env.trainers.algorithms.losses.common import behaviour_weight

PROXIMAL_POLICIES = ("none", "recompute", "loglinear")
"""Valid values of ``algorithm.proximal_policy``."""


def loglinear_proximal(
    behaviour: torch.Tensor,
    current: torch.Tensor,
    versions: torch.Tensor,
    *,
    proximal_version: int,
) -> torch.Tensor:
    """AReaL's log-linear approximation of the proximal logprobs (detached).

    Args:
        behaviour: [B, T] logprobs recorded at sampling.
        current: [B, T] logprobs under the weights being trained.
        versions: [B, T] the weight version that sampled each token (< 0 on prompts).
        proximal_version: the trainer's weight version at the start of this step.
    """
    v = versions.to(behaviour.dtype)
    alpha = ((proximal_version - v) / (proximal_version + 1 - v)).clamp(0.0, 1.0)
    # Prompt tokens (< 0) are not trained; a token as new as the proximal weights (or,
    # impossibly, newer) was sampled by them: alpha 0 keeps its behaviour logprob.
    fresh = (versions < 0) | (versions >= proximal_version)
    alpha = torch.where(fresh, torch.zeros_like(alpha), alpha)
    return (behaviour + alpha * (current.detach() - behaviour)).detach()


@dataclass(frozen=True, slots=True)
class DecoupledLoss:
    """Wraps any loss of ``LOSSES`` into its decoupled form (see the module docstring).

    The wrapped loss takes its ratio against ``inputs.proximal_logprobs`` and weights
    by the capped behaviour weight (``losses.common.prepare``); this wrapper only
    supplies the proximal logprobs and the cap, and reports the weight's metrics.
    """

    loss_fn: LossFn
    """The preset's loss."""
    proximal: str
    """``recompute`` or ``loglinear``."""
    weight_cap: float | None
    """Behaviour importance weights above it drop their token; None: no cap."""
    proximal_version: int
    """The trainer's weight version at the start of this step (for ``loglinear``)."""

    @property
    def needs_proximal_logprobs(self) -> bool:
        """True when the backend must recompute ``proximal_logprobs`` before updating."""
        return self.proximal == "recompute"

    def __call__(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        """The wrapped loss on the decoupled inputs, plus ``loss/behav_*`` metrics."""
        if self.proximal == "loglinear":
            if inputs.versions is None:
                raise ValueError("proximal_policy=loglinear needs token versions")
            prox = loglinear_proximal(
                inputs.behaviour_logprobs,
                inputs.logprobs,
                inputs.versions,
                proximal_version=self.proximal_version,
            )
        elif inputs.proximal_logprobs is None:
            raise ValueError(
                "proximal_policy=recompute: the backend did not supply proximal_logprobs"
            )
        else:
            prox = inputs.proximal_logprobs
        inputs = dataclasses.replace(
            inputs, proximal_logprobs=prox, behaviour_weight_cap=self.weight_cap
        )
        loss, metrics = self.loss_fn(inputs)
        return loss, {**metrics, **_weight_metrics(inputs, prox)}


def _weight_metrics(inputs: LossInputs, prox: torch.Tensor) -> dict[str, float]:
    """Token means over the minibatch (micro-batches add up): weight and dropped share."""
    with torch.no_grad():
        keep = inputs.loss_mask.bool()
        zero = torch.zeros_like(prox)
        behav = torch.where(keep, inputs.behaviour_logprobs, zero)
        raw = behaviour_weight(torch.where(keep, prox, zero), behav)
        cap = inputs.behaviour_weight_cap
        dropped = keep & (raw > cap) if cap is not None else torch.zeros_like(keep)
        n = max(inputs.token_count, 1.0)
        return {
            "loss/behav_weight_mean": float(torch.where(keep, raw, zero).sum()) / n,
            "loss/behav_dropped_frac": float(dropped.sum()) / n,
        }


def decoupled_loss(
    loss_fn: LossFn, *, proximal: str, weight_cap: float | None, proximal_version: int
) -> LossFn:
    """``loss_fn`` in decoupled form, or unchanged when ``proximal`` is "none".

    Raises:
        ValueError: an unknown ``proximal``, or a cap that is not > 1.
    """
    if proximal not in PROXIMAL_POLICIES:
        raise ValueError(f"proximal_policy must be one of {PROXIMAL_POLICIES}, got {proximal!r}")
    if weight_cap is not None and weight_cap <= 1.0:
        raise ValueError(f"behaviour_weight_cap must be > 1 or None, got {weight_cap}")
    if proximal == "none":
        return loss_fn
    return DecoupledLoss(
        loss_fn=loss_fn,
        proximal=proximal,
        weight_cap=weight_cap,
        proximal_version=proximal_version,
    )
