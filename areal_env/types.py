"""The typed objects that travel between layers: the contract of areal-env.

Every arrow of the data flow in DESIGN.md is one class here::

    env <-> agent -> ChatClient -> InferenceEngine
                     GenerationRequest  ->  GenerationResult
    agent -> Trajectory -> RolloutScheduler -> EpisodeBatch -> trainer
    trainer -> WeightUpdate -> InferenceEngine

Per-token lists are aligned with ``Trajectory.input_ids``: position ``t`` of
``loss_mask``, ``logprobs`` and ``versions`` describes token ``t``.

Example:
    A two-turn episode: prompt ``[p0 p1]``, first reply ``[a0 a1]`` sampled at
    weight version 3, a tool result ``[o0]``, second reply ``[b0]`` at version 4::

        input_ids = [p0, p1, a0,   a1,   o0, b0  ]
        loss_mask = [0,  0,  1,    1,    0,  1   ]
        logprobs  = [0., 0., -0.1, -0.7, 0., -0.2]
        versions  = [-1, -1, 3,    3,    -1, 4   ]
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

FinishReason = Literal["stop", "length", "abort"]
"""Why generation ended: a stop token/string, the token budget, or an abort."""

PROMPT_VERSION = -1
"""Weight version recorded for tokens the model did not generate."""


# uuid4() reads os.urandom on every call, which costs ~0.6 ms in some sandboxes:
# more than the rest of a short episode. One urandom-seeded generator is enough
# for ids that only need to be unique, not secret.
_ID_RNG = random.Random()


def new_id(prefix: str = "", n_hex: int = 32) -> str:
    """A random hex id (``prefix`` + ``n_hex`` hex digits) for requests and calls."""
    return f"{prefix}{_ID_RNG.getrandbits(4 * n_hex):0{n_hex}x}"


def _new_id() -> str:
    return new_id()


@dataclass(kw_only=True, slots=True, frozen=True)
class SamplingParams:
    """How to sample one completion.

    Example:
        >>> SamplingParams(max_new_tokens=8, temperature=0.0).greedy
        True
    """

    max_new_tokens: int = 256
    """Upper bound on generated tokens (the stop token counts)."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy. Logprobs are taken at this temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass; 1.0 disables it."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 disables it."""
    stop_token_ids: tuple[int, ...] = ()
    """Token ids that end generation (kept in the output, e.g. EOS)."""
    stop: tuple[str, ...] = ()
    """Strings that end generation once the decoded output contains one."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        """True when decoding takes the argmax token."""
        return self.temperature == 0.0


@dataclass(kw_only=True, slots=True, frozen=True)
class GenerationRequest:
    """One completion asked of an inference engine, token in.

    Example:
        >>> req = GenerationRequest(input_ids=(1, 2, 3), sampling=SamplingParams(max_new_tokens=4))
        >>> len(req.input_ids)
        3
    """

    input_ids: tuple[int, ...]
    """[P] Prompt token ids, exactly as the model must see them."""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    """Sampling parameters for this request."""
    request_id: str = field(default_factory=_new_id)
    """Unique id, used for logging, aborts and load-balancing affinity."""

    def __post_init__(self) -> None:
        if len(self.input_ids) == 0:
            raise ValueError("GenerationRequest.input_ids must not be empty")


@dataclass(kw_only=True, slots=True)
class GenerationResult:
    """What an engine produced for one request, token out.

    Example:
        >>> r = GenerationResult(request_id="r", input_ids=(1,), output_ids=[5, 2],
        ...                      output_logprobs=[-0.1, -0.2], output_versions=[0, 0],
        ...                      finish_reason="stop")
        >>> r.num_output_tokens
        2
    """

    request_id: str
    """Id of the request this answers."""
    input_ids: tuple[int, ...]
    """[P] The prompt ids the engine saw."""
    output_ids: list[int]
    """[G] Generated token ids, stop token included."""
    output_logprobs: list[float]
    """[G] Log-probability of each generated token under the sampling distribution."""
    output_versions: list[int]
    """[G] Weight version that produced each generated token."""
    finish_reason: FinishReason
    """Why generation ended."""

    def __post_init__(self) -> None:
        n = len(self.output_ids)
        if len(self.output_logprobs) != n or len(self.output_versions) != n:
            raise ValueError(
                "GenerationResult fields disagree in length: "
                f"ids={n}, logprobs={len(self.output_logprobs)}, "
                f"versions={len(self.output_versions)}"
            )

    @property
    def num_output_tokens(self) -> int:
        """Number of generated tokens."""
        return len(self.output_ids)


@dataclass(kw_only=True, slots=True, frozen=True)
class ToolCall:
    """A structured tool call parsed from an assistant message."""

    id: str
    """Call id, echoed back in the tool result message."""
    name: str
    """Function name."""
    arguments: str
    """JSON-encoded arguments, exactly as the model wrote them."""


@dataclass(kw_only=True, slots=True)
class Trajectory:
    """One finished episode, flattened into a single token sequence.

    The chat client appends prompt tokens (``loss_mask=0``) and sampled tokens
    (``loss_mask=1``) as the episode runs; the agent sets the reward at the end.
    See the module docstring for a two-turn example.
    """

    input_ids: list[int] = field(default_factory=list)
    """[L] Token ids of the whole episode."""
    loss_mask: list[int] = field(default_factory=list)
    """[L] 1 on generated tokens to train, 0 elsewhere."""
    logprobs: list[float] = field(default_factory=list)
    """[L] Behaviour log-probabilities of generated tokens; 0.0 elsewhere."""
    versions: list[int] = field(default_factory=list)
    """[L] Weight version per generated token; PROMPT_VERSION elsewhere."""
    reward: float = 0.0
    """Scalar episode reward."""
    task_id: str = ""
    """Identifies the task; episodes of one group share it."""
    messages: list[dict[str, Any]] = field(default_factory=list)
    """The chat history as the agent saw it (OpenAI message dicts), for logs."""
    num_turns: int = 0
    """Number of model completions in the episode."""
    truncated: bool = False
    """True when the episode was cut (turn limit, token budget)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Free-form per-episode facts from env and agent (e.g. accuracy)."""

    def append_prompt(self, ids: list[int] | tuple[int, ...]) -> None:
        """Append tokens the model reads but does not generate."""
        self.input_ids.extend(ids)
        self.loss_mask.extend([0] * len(ids))
        self.logprobs.extend([0.0] * len(ids))
        self.versions.extend([PROMPT_VERSION] * len(ids))

    def append_generation(self, result: GenerationResult) -> None:
        """Append one completion's sampled tokens with their logprobs and versions."""
        self.input_ids.extend(result.output_ids)
        self.loss_mask.extend([1] * len(result.output_ids))
        self.logprobs.extend(result.output_logprobs)
        self.versions.extend(result.output_versions)
        self.num_turns += 1

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_generated(self) -> int:
        """Number of trained (generated) tokens."""
        return sum(self.loss_mask)

    @property
    def oldest_version(self) -> int:
        """Lowest weight version among generated tokens (PROMPT_VERSION if none)."""
        gen = [v for v, m in zip(self.versions, self.loss_mask, strict=True) if m]
        return min(gen) if gen else PROMPT_VERSION


@dataclass(kw_only=True, slots=True)
class PaddedBatch:
    """Right-padded tensors built from an EpisodeBatch, ready for a forward pass."""

    input_ids: torch.Tensor
    """[B, L] long; padding is pad_id."""
    attention_mask: torch.Tensor
    """[B, L] long; 1 on real tokens."""
    loss_mask: torch.Tensor
    """[B, L] float; 1 on generated tokens. Shifted use: mask[:, 1:] scores logits[:, :-1]."""
    logprobs: torch.Tensor
    """[B, L] float; behaviour logprobs aligned with input_ids."""
    versions: torch.Tensor
    """[B, L] long; weight version per token."""
    rewards: torch.Tensor
    """[B] float; episode rewards."""
    advantages: torch.Tensor
    """[B] float; per-episode advantages (zeros until computed)."""
    group_index: torch.Tensor
    """[B] long; which group each row belongs to."""


@dataclass(kw_only=True, slots=True)
class EpisodeBatch:
    """Groups of finished episodes handed from the rollout scheduler to the trainer.

    ``groups[g]`` holds the ``n_samples`` episodes of one task, so group-relative
    advantages can be computed without any other bookkeeping.
    """

    groups: list[list[Trajectory]]
    """[G][N] Trajectories, grouped by task."""
    stats: dict[str, float] = field(default_factory=dict)
    """Rollout statistics for logging (reward mean, staleness, dropped counts...)."""
    advantages: list[list[float]] | None = None
    """[G][N] Per-episode advantages once computed by the algorithm; None before."""

    @property
    def trajectories(self) -> list[Trajectory]:
        """All trajectories, group by group."""
        return [t for g in self.groups for t in g]

    @property
    def rewards(self) -> list[float]:
        """All rewards, group by group."""
        return [t.reward for t in self.trajectories]

    def __len__(self) -> int:
        return sum(len(g) for g in self.groups)

    def padded(self, pad_id: int, rows: list[int] | None = None) -> PaddedBatch:
        """Stack (a subset of) the trajectories into right-padded tensors.

        Args:
            pad_id: token id used for padding.
            rows: indices into ``trajectories`` to keep; all when None.
        """
        trajs = self.trajectories
        flat_adv = [a for g in self.advantages for a in g] if self.advantages else None
        group_of = [gi for gi, g in enumerate(self.groups) for _ in g]
        keep = list(range(len(trajs))) if rows is None else list(rows)
        if not keep:
            raise ValueError("EpisodeBatch.padded: no rows selected")
        chosen = [trajs[i] for i in keep]
        length = max(len(t) for t in chosen)

        def stack(name: str, pad: float, dtype: torch.dtype) -> torch.Tensor:
            # One tensor() call over padded lists: per-row tensors cost more than the model.
            rows = [[*getattr(t, name), *[pad] * (length - len(t))] for t in chosen]
            return torch.tensor(rows, dtype=dtype)

        ids = stack("input_ids", pad_id, torch.long)
        attn = torch.tensor([[1] * len(t) + [0] * (length - len(t)) for t in chosen])
        mask = stack("loss_mask", 0.0, torch.float32)
        lps = stack("logprobs", 0.0, torch.float32)
        vers = stack("versions", PROMPT_VERSION, torch.long)
        b = len(keep)
        return PaddedBatch(
            input_ids=ids,
            attention_mask=attn,
            loss_mask=mask,
            logprobs=lps,
            versions=vers,
            rewards=torch.tensor([trajs[i].reward for i in keep], dtype=torch.float32),
            advantages=torch.tensor(
                [flat_adv[i] for i in keep] if flat_adv else [0.0] * b, dtype=torch.float32
            ),
            group_index=torch.tensor([group_of[i] for i in keep], dtype=torch.long),
        )


@dataclass(kw_only=True, slots=True)
class WeightUpdate:
    """New policy weights for an inference engine, and the version they carry.

    Exactly one of ``state_dict`` (in-process push) or ``path`` (a HF-format
    folder on shared disk, for remote servers) is set.
    """

    version: int
    """Weight version after the update; tokens sampled from now on carry it."""
    state_dict: dict[str, torch.Tensor] | None = None
    """Parameter name -> tensor, for engines in the same process."""
    path: str | None = None
    """Folder with HF-format weights, for engines that load from disk."""

    def __post_init__(self) -> None:
        if (self.state_dict is None) == (self.path is None):
            raise ValueError("WeightUpdate needs exactly one of state_dict or path")
