"""Forward a batch whose rows share prompts by running each shared prefix once.

The ``n_samples`` rows of a GRPO group start with the same prompt, which is
most of each row for short answers (14 of 17 tokens in the embedded default).
The plain forward computes that prompt ``n`` times. Here each group's common
prefix goes through the model once (``KVBatch.prefill``), its KV cache is
copied to the group's rows (an indexing op, so gradients from every row flow
back into the one prefix computation), and only the per-row suffixes run on
top of it. The result equals the plain forward at every position the losses
read (a test checks logits and gradients).

The shared prefix of a group stops one token before its earliest generated
token, so the suffix's logits predict every generated token. Positions inside
the prefix get zero logits: nothing reads them, since the loss mask is 0 there.
"""

from __future__ import annotations

import torch

from areal_env.inference.kv_cache import KVBatch, forward_with_cache, right_aligned_mask

MIN_SHARED_FRACTION = 0.25
"""Use the shared path only when it skips at least this fraction of the tokens."""


def _shared_prefix_lengths(
    input_ids: torch.Tensor, lengths: torch.Tensor, loss_mask: torch.Tensor, slots: torch.Tensor
) -> tuple[list[int], list[int]]:
    """Per group slot (0..G-1): (a representative row, its shared prefix length)."""
    first_gen = torch.where(
        loss_mask.bool().any(-1), loss_mask.float().argmax(-1), lengths
    ).tolist()
    reps: list[int] = []
    prefix: list[int] = []
    for slot in range(int(slots.max()) + 1):
        members = (slots == slot).nonzero().flatten().tolist()
        rep = members[0]
        k = min(first_gen[i] for i in members) - 1
        for i in members[1:]:
            same = (input_ids[i, :k] == input_ids[rep, :k]).long()
            k = min(k, int(same.cumprod(0).sum()))
        reps.append(rep)
        prefix.append(max(k, 0))
    return reps, prefix


def forward_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    loss_mask: torch.Tensor | None = None,
    group_index: torch.Tensor | None = None,
    *,
    pad_id: int = 0,
) -> torch.Tensor:
    """``[B, L, V]`` logits of right-padded rows, sharing each group's prompt when it pays.

    Args:
        model: a Hugging Face causal LM.
        input_ids: ``[B, L]`` right-padded token ids.
        attention_mask: ``[B, L]`` 1 on real tokens.
        loss_mask: ``[B, L]`` 1 on the tokens the caller will score; prefixes
            stop before the first of them. Without it (or ``group_index``) this
            is the plain forward.
        group_index: ``[B]`` rows with equal values may share a prefix.
        pad_id: token id for padding the suffixes.

    Returns:
        Logits at every position the loss reads (position t-1 predicts token t
        for every token at or after each row's first scored token).
    """
    if loss_mask is None or group_index is None:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits
    device = input_ids.device
    lengths = attention_mask.sum(-1)
    _, slots, counts = group_index.to(device).unique(return_inverse=True, return_counts=True)
    reps, prefix = _shared_prefix_lengths(input_ids, lengths, loss_mask.to(device), slots)
    n_rows = input_ids.shape[0]
    saved = sum(k * (n - 1) for k, n in zip(prefix, counts.tolist(), strict=True))  # runs once
    if min(prefix) < 1 or saved < MIN_SHARED_FRACTION * int(lengths.sum()):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits

    kv, _ = KVBatch.prefill(
        model, [input_ids[r, : prefix[s]].tolist() for s, r in enumerate(reps)], pad_id
    )
    kv.select(slots)

    starts = torch.tensor(prefix, dtype=torch.long, device=device)[slots]
    suffix_len = lengths - starts
    width = int(suffix_len.max())
    cols = torch.arange(width, device=device)
    take = (starts.unsqueeze(-1) + cols).clamp(max=input_ids.shape[1] - 1)
    real = cols.unsqueeze(0) < suffix_len.unsqueeze(-1)
    suffix = torch.where(real, input_ids.gather(1, take), torch.full_like(take, pad_id))
    mask = torch.cat([right_aligned_mask(kv.lengths, kv.width), real.long()], dim=-1)
    positions = kv.lengths.unsqueeze(-1) + cols
    _, logits = forward_with_cache(
        model, kv.cache, input_ids=suffix, attention_mask=mask, position_ids=positions
    )
    full = logits.new_zeros((n_rows, input_ids.shape[1], logits.shape[-1]))
    row_idx, col_idx = real.nonzero(as_tuple=True)
    return full.index_put((row_idx, starts[row_idx] + col_idx), logits[row_idx, col_idx])


__all__ = ["MIN_SHARED_FRACTION", "forward_logits"]
