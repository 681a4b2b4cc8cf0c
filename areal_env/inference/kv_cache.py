"""A left-padded KV-cache batch that rows can join and leave between decode steps.

Invariant: every row's real tokens are right-aligned in the cache. Row ``i``
occupies the last ``lengths[i]`` columns; the columns before are padding. Prefill
pads prompts on the left, a decode step appends one column to every row, and a
merge pads the shorter side on the left, so the invariant always holds and the
attention mask follows from ``lengths`` alone::

    cache columns   0  1  2  3  4
    row 0 (len 5)   a  a  a  a  a
    row 1 (len 2)   .  .  .  b  b      mask = [0 0 0 1 1], next position = 2

Position ids count real tokens only, so a padded row sees exactly the positions
it would see alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast


def right_aligned_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """Attention mask for rows whose real tokens fill the last ``lengths`` columns.

    Args:
        lengths: ``[B]`` long number of real tokens per row.
        width: number of columns.

    Returns:
        ``[B, width]`` long mask, 1 on real tokens.
    """
    cols = torch.arange(width, device=lengths.device).unsqueeze(0)
    return (cols >= (width - lengths).unsqueeze(-1)).long()


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(keys, values) for keys, values, *_ in cache]


def _cache_kwarg() -> str:
    """Name of the forward argument (and output field) that holds the KV cache.

    transformers 5.24 renamed ``past_key_values`` to ``cache`` and warns on the
    old name; older releases only know the old one. Decided from the library's
    output class, so wrapped models (``forward(**kwargs)``) get the same answer.
    """
    fields = getattr(CausalLMOutputWithPast, "__dataclass_fields__", {})
    return "cache" if "cache" in fields else "past_key_values"


CACHE_KWARG = _cache_kwarg()


def forward_with_cache(
    model: torch.nn.Module, cache: DynamicCache, **kwargs: object
) -> tuple[DynamicCache, torch.Tensor]:
    """One cached forward pass; returns the updated cache and the logits."""
    out = model(**kwargs, **{CACHE_KWARG: cache}, use_cache=True)
    return out[CACHE_KWARG], out.logits


def _rebuild(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    return DynamicCache(ddp_cache_data=layers)


class KVBatch:
    """Rows of sequences decoding together over one shared ``DynamicCache``.

    The tensors of ``cache`` are ``[B, heads, W, head_dim]`` per layer, where
    ``W`` (``width``) is the longest row; ``lengths`` is ``[B]``.
    """

    def __init__(self, cache: DynamicCache, lengths: torch.Tensor) -> None:
        self.cache = cache
        self.lengths = lengths

    @property
    def size(self) -> int:
        """Number of rows."""
        return int(self.lengths.shape[0])

    @property
    def width(self) -> int:
        """Number of cache columns (the longest row's token count)."""
        return self.cache.get_seq_length()

    @classmethod
    def prefill(
        cls, model: torch.nn.Module, prompts: Sequence[Sequence[int]], pad_id: int
    ) -> tuple[KVBatch, torch.Tensor]:
        """Run left-padded prompts through ``model`` and keep their KV cache.

        Args:
            model: a Hugging Face causal LM.
            prompts: ``B`` non-empty token-id sequences.
            pad_id: any valid token id; padded columns are masked out.

        Returns:
            The new batch and ``[B, V]`` logits of each prompt's next token.
        """
        distinct = list(dict.fromkeys(tuple(p) for p in prompts))
        if len(distinct) < len(prompts):
            # The n samples of a group arrive with one prompt: run it once and
            # give each copy its own row of the cache (prefix sharing).
            batch, logits = cls.prefill(model, distinct, pad_id)
            where = {p: i for i, p in enumerate(distinct)}
            rows = [where[tuple(p)] for p in prompts]
            index = torch.tensor(rows, dtype=torch.long, device=logits.device)
            batch.select(index)
            return batch, logits[index]
        device = next(model.parameters()).device
        lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long, device=device)
        width = int(lengths.max())
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.as_tensor(prompt, dtype=torch.long)
        mask = right_aligned_mask(lengths, width)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache, logits = forward_with_cache(
            model,
            DynamicCache(),
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            logits_to_keep=1,
        )
        return cls(cache, lengths), logits[:, -1, :]

    def decode(self, model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one new token per row and return the logits that follow it.

        Args:
            model: the model that built this cache.
            tokens: ``[B]`` long token ids, one per row.

        Returns:
            ``[B, V]`` next-token logits.
        """
        mask = right_aligned_mask(self.lengths + 1, self.width + 1)
        self.cache, logits = forward_with_cache(
            model,
            self.cache,
            input_ids=tokens.unsqueeze(-1),
            attention_mask=mask,
            position_ids=self.lengths.unsqueeze(-1),
        )
        self.lengths = self.lengths + 1
        return logits[:, -1, :]

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the rows ``keep`` (``[K]`` long indices) and drop unneeded padding."""
        self.lengths = self.lengths[keep]
        unused = self.width - int(self.lengths.max()) if self.size else 0
        self.cache = _rebuild(
            [(k[keep, :, unused:], v[keep, :, unused:]) for k, v in _layers(self.cache)]
        )

    def merge(self, other: KVBatch) -> None:
        """Append the rows of ``other`` after this batch's rows, padding on the left."""
        width = max(self.width, other.width)
        merged = []
        for (k1, v1), (k2, v2) in zip(_layers(self.cache), _layers(other.cache), strict=True):
            pad1, pad2 = (0, 0, width - self.width, 0), (0, 0, width - other.width, 0)
            merged.append(
                (
                    torch.cat([F.pad(k1, pad1), F.pad(k2, pad2)]),
                    torch.cat([F.pad(v1, pad1), F.pad(v2, pad2)]),
                )
            )
        self.cache = _rebuild(merged)
        self.lengths = torch.cat([self.lengths, other.lengths])
