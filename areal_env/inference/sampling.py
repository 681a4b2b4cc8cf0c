"""Token sampling as pure torch functions over a batch of next-token logits.

Every function takes ``logits: [B, V]`` (one row per sequence) and per-row
parameters as ``[B]`` tensors, so one call serves a batch that mixes greedy and
sampled requests with different temperatures, top-k and top-p.

The logprob recorded for a token is ``log_softmax(logits / T)`` at that token,
taken before top-k / top-p truncation (``T = 1`` for greedy rows). A trainer
reproduces it with one forward pass and the same temperature; truncation only
shapes which tokens can be drawn.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_NEG_INF = float("-inf")


def apply_temperature(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Divide each row of logits by its temperature; rows with ``T == 0`` use ``T = 1``.

    Args:
        logits: ``[B, V]`` float logits.
        temperature: ``[B]`` temperatures; 0 marks a greedy row.

    Returns:
        ``[B, V]`` scaled logits.
    """
    temp = torch.where(temperature > 0, temperature, torch.ones_like(temperature))
    return logits / temp.to(logits.dtype).unsqueeze(-1)


def top_k_filter(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Set every logit below a row's k-th largest to ``-inf``.

    Args:
        logits: ``[B, V]`` float logits.
        top_k: ``[B]`` long; ``k <= 0`` (or ``k >= V``) keeps the whole row.

    Returns:
        ``[B, V]`` filtered logits (ties with the k-th value are kept).
    """
    vocab = logits.shape[-1]
    k = torch.where((top_k > 0) & (top_k < vocab), top_k, torch.full_like(top_k, vocab))
    sorted_logits = logits.sort(dim=-1, descending=True).values
    kth = sorted_logits.gather(-1, (k - 1).unsqueeze(-1))
    return logits.masked_fill(logits < kth, _NEG_INF)


def top_p_filter(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability mass reaches ``p``.

    Args:
        logits: ``[B, V]`` float logits.
        top_p: ``[B]`` float nucleus mass in ``(0, 1]``; 1 keeps the whole row.

    Returns:
        ``[B, V]`` filtered logits; the most likely token always survives.
    """
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    p = top_p.to(probs.dtype).unsqueeze(-1)
    # Rows with p == 1 keep everything, even where float rounding pushes the mass past 1.
    drop_sorted = (mass_before >= p) & (p < 1)
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, _NEG_INF)


def sample_from_logits(
    logits: torch.Tensor,
    generator: torch.Generator | None,
    row_generators: Sequence[torch.Generator | None] | None = None,
) -> torch.Tensor:
    """Draw one token per row from ``softmax(logits)``.

    Args:
        logits: ``[B, V]`` float logits; ``-inf`` entries are never drawn.
        generator: random source, so a seeded engine is reproducible.
        row_generators: per row, its own random source (a request with a seed) or None
            (the row draws from ``generator``); such a row's tokens do not depend on
            which other rows share the batch.

    Returns:
        ``[B]`` long token ids.
    """
    probs = logits.softmax(dim=-1)
    if row_generators is None or all(g is None for g in row_generators):
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
    shared = [i for i, g in enumerate(row_generators) if g is None]
    tokens = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    if shared:
        rows = torch.tensor(shared, device=probs.device)
        tokens[rows] = torch.multinomial(probs[rows], 1, generator=generator).squeeze(-1)
    for i, own in enumerate(row_generators):
        if own is not None:
            tokens[i] = torch.multinomial(probs[i], 1, generator=own)[0]
    return tokens


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """Pick the most likely token of each row.

    Args:
        logits: ``[B, V]`` float logits.

    Returns:
        ``[B]`` long token ids.
    """
    return logits.argmax(dim=-1)


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of each row's chosen token under ``log_softmax(logits)``.

    Args:
        logits: ``[B, V]`` float logits (already divided by the temperature).
        tokens: ``[B]`` long chosen token ids.

    Returns:
        ``[B]`` float32 log-probabilities.
    """
    logprobs = logits.float().log_softmax(dim=-1)
    return logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def sample_next_tokens(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    generator: torch.Generator | None,
    row_generators: Sequence[torch.Generator | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose the next token of every row and its untruncated logprob.

    Args:
        logits: ``[B, V]`` raw next-token logits.
        temperature: ``[B]`` float; 0 means greedy for that row.
        top_k: ``[B]`` long; 0 disables top-k for that row.
        top_p: ``[B]`` float; 1 disables top-p for that row.
        generator: random source for the sampled rows.
        row_generators: per-row random sources of seeded requests (see
            :func:`sample_from_logits`).

    Returns:
        ``([B] long tokens, [B] float32 logprobs of log_softmax(logits / T))``.
    """
    logits = logits.float()
    scaled = apply_temperature(logits, temperature)
    is_greedy = temperature == 0
    tokens = greedy(logits)
    if not bool(is_greedy.all()):
        filtered = scaled
        if bool(((top_k > 0) & ~is_greedy).any()):
            filtered = top_k_filter(filtered, top_k)
        if bool(((top_p < 1) & ~is_greedy).any()):
            filtered = top_p_filter(filtered, top_p)
        sampled = sample_from_logits(filtered, generator, row_generators)
        tokens = torch.where(is_greedy, tokens, sampled)
    return tokens, gather_logprobs(scaled, tokens)
