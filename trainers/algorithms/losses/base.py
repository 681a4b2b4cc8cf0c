"""What every loss function receives: one typed object, and the loss signature.

A loss sees one micro-batch at a time, but its value must not depend on how a
batch was cut into micro-batches (or, with data-parallel training, into ranks).
So the normalisers come from outside: ``num_tokens`` and ``num_sequences`` count
the trained tokens and trained rows of the *whole* minibatch, on every rank.
Each micro-batch's loss is then its share of the minibatch loss, and summing
the micro-batch gradients gives exactly the gradient of the whole minibatch.

Example:
    >>> import torch
    >>> lp = torch.tensor([[0.0, -1.0, -2.0]])
    >>> inputs = LossInputs(logprobs=lp, behaviour_logprobs=lp, advantages=torch.ones(1, 3),
    ...                     loss_mask=torch.tensor([[0.0, 1.0, 1.0]]))
    >>> inputs.token_count, inputs.sequence_count
    (2.0, 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(kw_only=True, slots=True)
class LossInputs:
    """Per-token tensors of one micro-batch plus the minibatch-wide normalisers.

    All per-token tensors are ``[B, T]`` and aligned: position ``t`` describes
    token ``t`` (scored by the logits at ``t - 1``).
    """

    logprobs: torch.Tensor
    """[B, T] log-probabilities of the tokens under the policy being trained; the only
    input that carries gradient."""
    behaviour_logprobs: torch.Tensor
    """[B, T] the same under the policy that sampled them (recorded by the engine)."""
    advantages: torch.Tensor
    """[B, T] token-level advantages (an episode's advantage repeated over its tokens,
    or per-token values from a critic)."""
    loss_mask: torch.Tensor
    """[B, T] 1 on tokens to train, 0 on prompt, tool output and padding."""
    proximal_logprobs: torch.Tensor | None = None
    """[B, T] the proximal policy of decoupled PPO (AReaL): the ratio is taken against
    it and the behaviour policy enters only as an importance weight; None = behaviour."""
    ref_logprobs: torch.Tensor | None = None
    """[B, T] the frozen reference model, for a KL penalty; None when there is none."""
    behaviour_weight_cap: float | None = None
    """Decoupled PPO: tokens whose behaviour importance weight ``pi_prox / pi_behav``
    exceeds this are dropped from the loss (weight 0, still counted in the normalisers:
    they are samples too stale to correct); None keeps every token."""
    versions: torch.Tensor | None = None
    """[B, T] weight version that sampled each token (-1 on prompt tokens)."""
    num_tokens: float | None = None
    """Trained tokens in the whole minibatch (all micro-batches, all ranks); None means
    this micro-batch is the whole minibatch."""
    num_sequences: float | None = None
    """Rows with at least one trained token in the whole minibatch; None as above."""

    @property
    def token_count(self) -> float:
        """The token normaliser: ``num_tokens``, or this micro-batch's trained tokens."""
        if self.num_tokens is not None:
            return float(self.num_tokens)
        return float(self.loss_mask.sum())

    @property
    def sequence_count(self) -> float:
        """The sequence normaliser: ``num_sequences``, or this micro-batch's trained rows."""
        if self.num_sequences is not None:
            return float(self.num_sequences)
        return float((self.loss_mask.sum(-1) > 0).sum())


class LossFn(Protocol):
    """A loss over one micro-batch: ``(loss, metrics)``.

    Metrics are normalised like the loss (by the minibatch-wide counts), so the
    backend sums them over micro-batches to get the minibatch's values.
    """

    def __call__(self, inputs: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss (differentiable in ``inputs.logprobs``) and float metrics."""
        ...
