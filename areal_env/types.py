"""The typed objects that travel between layers: the contract of areal-env.

Every arrow of the data flow in DESIGN.md is one class here::

    env <-> agent -> ChatClient -> InferenceEngine
                     GenerationRequest  ->  GenerationResult
    agent -> Trajectory -> RolloutScheduler -> EpisodeBatch -> trainer
    trainer -> WeightUpdate -> InferenceEngine

An episode (``Trajectory``) holds one or more ``Sample``s: token sequences that
each become one training row. Per-token lists are aligned with
``Sample.input_ids``: position ``t`` of ``loss_mask``, ``logprobs`` and
``versions`` describes token ``t``.

Example:
    A two-turn episode in one sample: prompt ``[p0 p1]``, first reply ``[a0 a1]``
    sampled at weight version 3, a tool result ``[o0]``, second reply ``[b0]`` at
    version 4::

        input_ids = [p0, p1, a0,   a1,   o0, b0  ]
        loss_mask = [0,  0,  1,    1,    0,  1   ]
        logprobs  = [0., 0., -0.1, -0.7, 0., -0.2]
        versions  = [-1, -1, 3,    3,    -1, 4   ]

    Had the chat template been unable to extend ``[p0 p1 a0 a1]`` with the tool
    result, the second turn would be a second sample of the same episode,
    ``[p0' p1' o0' b0]``, re-rendered as a prompt (``loss_mask`` 0) with only
    ``b0`` trained: sampled ids are never re-tokenized.
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
    seed: int | None = None
    """Random seed of this request alone: the same seed, prompt and weights draw the same
    tokens whatever else the engine runs (reproducible runs); None: the engine's stream."""

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
    """Unique id, used for logging and aborts."""
    session_id: str | None = None
    """Requests that share a session (one episode's turns) go to the same server,
    where its prefix cache holds their common prefix; None: no affinity."""

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
class Sample:
    """One token sequence of an episode as the model saw and sampled it: one training row.

    The chat client appends prompt tokens (``loss_mask=0``) and sampled tokens
    (``loss_mask=1``) as the episode runs. Every generation of one sample was drawn
    with the same ``sampling`` parameters, so the trainer can score the whole row at
    one temperature; a call with other parameters starts a new sample.

    Example:
        >>> s = Sample()
        >>> s.append_prompt([7, 8])
        >>> s.append_generation(GenerationResult(request_id="r", input_ids=(7, 8),
        ...     output_ids=[5], output_logprobs=[-0.3], output_versions=[2],
        ...     finish_reason="stop"), SamplingParams(temperature=0.7))
        >>> s.loss_mask, s.versions, s.temperature
        ([0, 0, 1], [-1, -1, 2], 0.7)
    """

    input_ids: list[int] = field(default_factory=list)
    """[L] Token ids of the sequence."""
    loss_mask: list[int] = field(default_factory=list)
    """[L] 1 on generated tokens to train, 0 elsewhere."""
    logprobs: list[float] = field(default_factory=list)
    """[L] Behaviour log-probabilities of generated tokens; 0.0 elsewhere."""
    versions: list[int] = field(default_factory=list)
    """[L] Weight version per generated token; PROMPT_VERSION elsewhere."""
    sampling: SamplingParams | None = None
    """Parameters every generation of this sample was drawn with; None before the first."""
    num_turns: int = 0
    """Number of model completions recorded in this sample."""

    def append_prompt(self, ids: list[int] | tuple[int, ...]) -> None:
        """Append tokens the model reads but does not generate."""
        self.input_ids.extend(ids)
        self.loss_mask.extend([0] * len(ids))
        self.logprobs.extend([0.0] * len(ids))
        self.versions.extend([PROMPT_VERSION] * len(ids))

    def accepts(self, sampling: SamplingParams) -> bool:
        """True when a generation drawn with ``sampling`` may join this sample."""
        return self.sampling is None or _scoring_key(self.sampling) == _scoring_key(sampling)

    def append_generation(self, result: GenerationResult, sampling: SamplingParams) -> None:
        """Append one completion's sampled tokens with their logprobs and versions.

        Raises:
            ValueError: when ``sampling`` differs from the sample's in temperature,
                top-p or top-k (start a new sample for it instead).
        """
        if not self.accepts(sampling):
            raise ValueError(
                f"a generation sampled with {_scoring_key(sampling)} (temperature, top_p, "
                f"top_k) cannot join a sample drawn with {_scoring_key(self.sampling)}"
            )
        self.sampling = self.sampling or sampling
        self.input_ids.extend(result.output_ids)
        self.loss_mask.extend([1] * len(result.output_ids))
        self.logprobs.extend(result.output_logprobs)
        self.versions.extend(result.output_versions)
        self.num_turns += 1

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def temperature(self) -> float:
        """Temperature the trainer scores this sample at (1.0 for greedy or no generation)."""
        t = 1.0 if self.sampling is None else self.sampling.temperature
        return t if t > 0 else 1.0

    @property
    def num_generated(self) -> int:
        """Number of trained (generated) tokens."""
        return sum(self.loss_mask)

    @property
    def oldest_version(self) -> int:
        """Lowest weight version among generated tokens (PROMPT_VERSION if none)."""
        gen = [v for v, m in zip(self.versions, self.loss_mask, strict=True) if m]
        return min(gen) if gen else PROMPT_VERSION


def _scoring_key(sampling: SamplingParams | None) -> tuple[float, float, int] | None:
    if sampling is None:
        return None
    return (sampling.temperature, sampling.top_p, sampling.top_k)


@dataclass(kw_only=True, slots=True)
class Trajectory:
    """One finished episode: its samples, its reward and what happened in it.

    Most episodes are one sample: a multi-turn chat whose every turn extends the
    same token sequence. An episode holds several when one sequence cannot
    carry it faithfully: the chat template cannot extend the sampled prefix (one
    sample per turn then), a call changes the sampling parameters, or an agent
    makes independent calls (sub-agents, handoffs, a wrapped framework's
    parallel completions). Every sample is a training row that shares the
    episode's reward and advantage.

    Example:
        >>> t = Trajectory(samples=[Sample(input_ids=[1, 2], loss_mask=[0, 1],
        ...     logprobs=[0.0, -0.5], versions=[-1, 3])], reward=1.0)
        >>> t.num_generated, t.oldest_version, len(t)
        (1, 3, 2)
    """

    samples: list[Sample] = field(default_factory=list)
    """The episode's token sequences, in the order they were started."""
    reward: float = 0.0
    """Scalar episode reward."""
    task_id: str = ""
    """Identifies the task; episodes of one group share it."""
    messages: list[dict[str, Any]] = field(default_factory=list)
    """The chat history as the agent saw it (OpenAI message dicts), for logs."""
    truncated: bool = False
    """True when the episode was cut (turn limit, token budget)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Free-form per-episode facts from env and agent (e.g. accuracy)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Per-episode counters the rollout layer averages into metrics
    as ``rollout/<key>_mean`` (e.g. ``drift_events``, ``tool_call_parse_errors``)."""

    def __len__(self) -> int:
        return sum(len(s) for s in self.samples)

    @property
    def num_turns(self) -> int:
        """Model completions in the episode, over all samples."""
        return sum(s.num_turns for s in self.samples)

    @property
    def num_generated(self) -> int:
        """Number of trained (generated) tokens, over all samples."""
        return sum(s.num_generated for s in self.samples)

    @property
    def oldest_version(self) -> int:
        """Lowest weight version among generated tokens (PROMPT_VERSION if none)."""
        versions = [v for s in self.samples if (v := s.oldest_version) != PROMPT_VERSION]
        return min(versions) if versions else PROMPT_VERSION


@dataclass(kw_only=True, slots=True, frozen=True)
class RowRef:
    """Where a training row comes from: its group, its episode and its sample."""

    group: int
    """Index into ``EpisodeBatch.groups``."""
    episode: int
    """Index into ``EpisodeBatch.trajectories`` (episodes numbered across groups)."""
    sample: int
    """Index into that trajectory's ``samples``."""


@dataclass(kw_only=True, slots=True)
class PaddedBatch:
    """Right-padded tensors built from an EpisodeBatch, ready for a forward pass.

    One row per sample. Shifted use of the per-token fields: ``mask[:, t]`` says
    whether token ``t`` is trained, and it is scored by ``logits[:, t - 1]``.
    """

    input_ids: torch.Tensor
    """[B, L] long; padding is pad_id."""
    attention_mask: torch.Tensor
    """[B, L] long; 1 on real tokens."""
    loss_mask: torch.Tensor
    """[B, L] float; 1 on generated tokens."""
    logprobs: torch.Tensor
    """[B, L] float; behaviour logprobs aligned with input_ids."""
    versions: torch.Tensor
    """[B, L] long; weight version per token."""
    rewards: torch.Tensor
    """[B] float; the reward of each row's episode."""
    advantages: torch.Tensor
    """[B, L] float; token-level advantages (an episode's advantage on every token of its
    rows, unless token-level ones were set); zeros until computed."""
    temperatures: torch.Tensor
    """[B] float; the temperature each row was sampled at (and must be scored at)."""
    group_index: torch.Tensor
    """[B] long; which group each row belongs to."""
    episode_index: torch.Tensor
    """[B] long; which episode (index into ``EpisodeBatch.trajectories``) each row is from."""


@dataclass(kw_only=True, slots=True)
class EpisodeBatch:
    """Groups of finished episodes handed from the rollout scheduler to the trainer.

    ``groups[g]`` holds the ``n_samples`` episodes of one task, so group-relative
    advantages need no other bookkeeping. Training rows are the episodes'
    samples, numbered group by group, episode by episode (``row_refs``).
    """

    groups: list[list[Trajectory]]
    """[G][N] Trajectories, grouped by task."""
    stats: dict[str, float] = field(default_factory=dict)
    """Rollout statistics for logging (reward mean, staleness, dropped counts...)."""
    advantages: list[list[float]] | None = None
    """[G][N] Per-episode advantages once computed by the algorithm; None before."""
    token_advantages: list[list[float]] | None = None
    """[R][L_r] Per-token advantages of each row (a critic's GAE, turn-level credit);
    when set they replace the per-episode ones."""

    @property
    def trajectories(self) -> list[Trajectory]:
        """All trajectories, group by group."""
        return [t for g in self.groups for t in g]

    @property
    def rewards(self) -> list[float]:
        """All rewards, group by group."""
        return [t.reward for t in self.trajectories]

    def row_refs(self) -> list[RowRef]:
        """Group, episode and sample of every training row, in row order."""
        refs: list[RowRef] = []
        episode = 0
        for g, group in enumerate(self.groups):
            for traj in group:
                refs.extend(
                    RowRef(group=g, episode=episode, sample=s) for s in range(len(traj.samples))
                )
                episode += 1
        return refs

    def __len__(self) -> int:
        return sum(len(g) for g in self.groups)

    def padded(self, pad_id: int, rows: list[int] | None = None) -> PaddedBatch:
        """Stack (a subset of) the rows into right-padded tensors.

        Args:
            pad_id: token id used for padding.
            rows: indices into ``row_refs()`` to keep; all when None.

        Raises:
            ValueError: when no row is selected or token advantages do not match a row.
        """
        trajs = self.trajectories
        refs = self.row_refs()
        keep = list(range(len(refs))) if rows is None else list(rows)
        if not keep:
            raise ValueError("EpisodeBatch.padded: no rows selected")
        chosen = [refs[i] for i in keep]
        samples = [trajs[r.episode].samples[r.sample] for r in chosen]
        length = max(len(s) for s in samples)

        def stack(values: list[list[Any]], pad: float, dtype: torch.dtype) -> torch.Tensor:
            # One tensor() call over padded lists: per-row tensors cost more than the model.
            return torch.tensor([[*v, *[pad] * (length - len(v))] for v in values], dtype=dtype)

        return PaddedBatch(
            input_ids=stack([s.input_ids for s in samples], pad_id, torch.long),
            attention_mask=stack([[1] * len(s) for s in samples], 0, torch.long),
            loss_mask=stack([s.loss_mask for s in samples], 0.0, torch.float32),
            logprobs=stack([s.logprobs for s in samples], 0.0, torch.float32),
            versions=stack([s.versions for s in samples], PROMPT_VERSION, torch.long),
            rewards=torch.tensor([trajs[r.episode].reward for r in chosen], dtype=torch.float32),
            advantages=stack(self._row_advantages(keep, chosen, samples), 0.0, torch.float32),
            temperatures=torch.tensor([s.temperature for s in samples], dtype=torch.float32),
            group_index=torch.tensor([r.group for r in chosen], dtype=torch.long),
            episode_index=torch.tensor([r.episode for r in chosen], dtype=torch.long),
        )

    def _row_advantages(
        self, keep: list[int], chosen: list[RowRef], samples: list[Sample]
    ) -> list[list[float]]:
        if self.token_advantages is not None:
            out = [self.token_advantages[i] for i in keep]
            for i, adv, s in zip(keep, out, samples, strict=True):
                if len(adv) != len(s):
                    raise ValueError(
                        f"token_advantages[{i}] has {len(adv)} values for {len(s)} tokens"
                    )
            return out
        if self.advantages is None:
            return [[0.0] * len(s) for s in samples]
        flat = [a for g in self.advantages for a in g]
        return [[flat[r.episode]] * len(s) for r, s in zip(chosen, samples, strict=True)]


@dataclass(kw_only=True, slots=True)
class WeightUpdate:
    """New policy weights for an inference engine, and the version they carry.

    Exactly one of ``state_dict`` (in-process push) or ``path`` (a HF-format
    folder on shared disk, for remote servers) is set. With ``adapter`` the
    folder holds only a peft LoRA adapter (``adapter_config.json`` +
    ``adapter_model.safetensors``) for servers that apply it on their frozen base
    (``inference.lora_adapters``): megabytes to write and load instead of the model.
    """

    version: int
    """Weight version after the update; tokens sampled from now on carry it."""
    state_dict: dict[str, torch.Tensor] | None = None
    """Parameter name -> tensor, for engines in the same process."""
    path: str | None = None
    """Folder with HF-format weights, for engines that load from disk."""
    adapter: bool = False
    """``path`` holds a peft LoRA adapter for the server's base model, not full weights."""
    base_path: str | None = None
    """With ``adapter``: HF-format base weights (adapters not merged) to load before the
    adapter, when the servers may hold another base (the first push of a run)."""

    def __post_init__(self) -> None:
        if (self.state_dict is None) == (self.path is None):
            raise ValueError("WeightUpdate needs exactly one of state_dict or path")
        if self.adapter and self.path is None:
            raise ValueError("WeightUpdate(adapter=True) needs the adapter folder as path")
        if self.base_path is not None and not self.adapter:
            raise ValueError("WeightUpdate.base_path goes with adapter=True")
