"""Supervised loss: token-mean negative log-likelihood (SFT, warm starts)."""

from __future__ import annotations

import torch

from areal_env.trainers.algorithms.losses.base import LossInputs


def nll_loss(inputs: LossInputs) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean of ``-logprobs`` over the trained tokens of the whole minibatch.

    Only ``logprobs``, ``loss_mask`` and the token count of ``inputs`` are read;
    the RL fields are ignored, so SFT runs through the same backend as RL.

    Returns:
        (loss, {"sft/nll": value}); an all-zero mask gives loss 0, not NaN.

    Example:
        >>> lp = torch.tensor([[0.0, -1.0, -3.0]])
        >>> inputs = LossInputs(logprobs=lp, behaviour_logprobs=lp, advantages=lp,
        ...                     loss_mask=torch.tensor([[0.0, 1.0, 1.0]]))
        >>> nll_loss(inputs)[0].item()
        2.0
    """
    mask = inputs.loss_mask
    nll = -torch.where(mask.bool(), inputs.logprobs, 0.0).sum() / max(inputs.token_count, 1.0)
    return nll, {"sft/nll": float(nll.detach())}
