"""Generalized Advantage Estimation over the generated tokens of each row.

GAE (Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized
Advantage Estimation", https://arxiv.org/abs/1506.02438) trades the variance of
Monte-Carlo returns against the bias of a learned value function ``V``::

    delta_k = r_k + gamma * V_{k+1} - V_k
    A_k     = delta_k + gamma * lam * A_{k+1}        (A_{K+1} = 0, V_{K+1} = 0)
    R_k     = A_k + V_k                              (the value target, a lambda-return)

How a row of an LLM episode becomes an MDP here (the choices PPO-for-LLM trainers
make, e.g. InstructGPT / OpenRLHF, not something the paper prescribes):

- A step is one *generated* token (``loss_mask == 1``). Prompt and tool-output tokens
  (``loss_mask == 0``) are not actions: they are part of the environment's transition,
  so they are skipped, and the next generated token's value bootstraps straight across
  them (one ``gamma`` per generated token, none per skipped token). The value of a step
  is the critic's estimate for the state *before* the token is sampled.
- The episode's scalar reward is paid on the row's last generated token; every other
  step's reward is 0, and the last step is terminal (``V_{K+1} = 0``), also for rows cut
  by the token budget: the env has already scored the episode, nothing follows.
- Each row is its own sequence of steps. An episode with several samples (rows) pays its
  reward on the last generated token of each of them, as the group estimators give each
  of its rows the episode's advantage.

Example:
    >>> import torch
    >>> adv, ret = gae_advantages(
    ...     torch.tensor([1.0]), torch.tensor([[0.0, 0.5, 0.8]]),
    ...     torch.tensor([[0.0, 1.0, 1.0]]), gamma=1.0, lam=1.0)
    >>> [round(a, 4) for a in adv[0].tolist()], [round(r, 4) for r in ret[0].tolist()]
    ([0.0, 0.5, 0.2], [0.0, 1.0, 1.0])
"""

from __future__ import annotations

import torch


def gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token GAE advantages and value targets of a padded batch.

    Args:
        rewards: [B] the scalar reward of each row's episode.
        values: [B, L] the critic's value of the state before each token (only the
            positions ``loss_mask`` marks are read).
        loss_mask: [B, L] 1 on generated tokens (the steps), 0 on prompt, tool output
            and padding.
        gamma: discount per generated token, in [0, 1].
        lam: the GAE trace parameter, in [0, 1]: 0 is the one-step TD error, 1 the
            Monte-Carlo return minus the value.

    Returns:
        (advantages, returns), both [B, L] float32 and 0 where ``loss_mask`` is 0.

    Raises:
        ValueError: on mismatched shapes or gamma / lam outside [0, 1].
    """
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must be in [0, 1], got {gamma}, {lam}")
    if values.dim() != 2 or values.shape != loss_mask.shape:
        raise ValueError(
            f"values and loss_mask must be [B, L] alike, got {tuple(values.shape)} "
            f"and {tuple(loss_mask.shape)}"
        )
    if rewards.shape != values.shape[:1]:
        raise ValueError(f"rewards must be [B] = [{values.shape[0]}], got {tuple(rewards.shape)}")
    values = values.float()
    step = loss_mask.bool()
    # The reward goes to the last generated token of each row: the step after which no
    # step follows, i.e. where the reversed cumulative count of steps is 1 on a step.
    later_steps = step.flip(-1).long().cumsum(-1).flip(-1)
    last = step & (later_steps == 1)
    token_rewards = torch.where(last, rewards.float().unsqueeze(-1), torch.zeros_like(values))

    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(values[:, 0])
    for t in range(values.shape[1] - 1, -1, -1):  # backwards: A_k needs A_{k+1}
        is_step = step[:, t]
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        advantages[:, t] = torch.where(is_step, adv, torch.zeros_like(adv))
        # Skipped tokens carry the next step's value and advantage across unchanged.
        next_value = torch.where(is_step, values[:, t], next_value)
        next_adv = torch.where(is_step, adv, next_adv)
    returns = torch.where(step, advantages + values, torch.zeros_like(values))
    return advantages, returns


def whiten(advantages: torch.Tensor, loss_mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Advantages shifted and scaled to mean 0, std 1 over the masked tokens of the batch.

    As in the PPO implementations the paper's results come from (OpenAI baselines): a
    scale that does not drift with the reward's scale or the critic's error keeps the
    clipped step size meaningful. Population std; a batch with one token gets 0.

    Args:
        advantages: [B, L] advantages.
        loss_mask: [B, L] 1 on the tokens that count.
        eps: added to the std.

    Returns:
        [B, L] whitened advantages, 0 where ``loss_mask`` is 0.
    """
    keep = loss_mask.bool()
    picked = advantages[keep]
    if picked.numel() == 0:
        return torch.zeros_like(advantages)
    mean = picked.mean()
    std = picked.std(unbiased=False)
    out = (advantages - mean) / (std + eps)
    return torch.where(keep, out, torch.zeros_like(out))
