"""One config tree: OmegaConf structured dataclasses, a YAML file, dotted overrides.

Each component defines its own ``...Config`` dataclass next to the code that uses
it; an entry point (e.g. ``trainers/grpo.py``) assembles the root dataclass and
calls :func:`load_config`. This module holds the core configs that every entry
point shares (model, env, metrics, checkpoint) and the loader.

Command line grammar::

    python trainers/grpo.py [--config FILE.yaml] [--resume] [key.sub=value ...]

Unknown keys and values of the wrong type fail at start-up with a ``ValueError``
that names the dotted key.

Example:
    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class Root:
    ...     model: ModelConfig = field(default_factory=ModelConfig)
    >>> load_config(Root, ["model.dtype=bfloat16"]).model.dtype
    'bfloat16'
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from areal_env import devices
from areal_env.devices import DEVICE_TYPES
from areal_env.models.tiny import TinyModelConfig

T = TypeVar("T")

DEVICES = ("auto", *DEVICE_TYPES)
"""Choices of ``model.device``: ``"auto"``, cuda, npu, xpu, mps, cpu."""
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(kw_only=True, slots=True)
class ModelConfig:
    """Which policy model to train and where it runs."""

    path: str | None = None
    """HF hub id or local folder; None builds the embedded tiny model offline."""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    """Shape of the embedded tiny model (used when ``path`` is None)."""
    dtype: str = "float32"
    """Parameter dtype for training and local inference."""
    device: str = "auto"
    """'auto' picks the best accelerator present (npu, cuda, xpu, mps), else cpu."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.device not in DEVICES:
            raise ValueError(f"model.device must be one of {DEVICES}, got {self.device!r}")


@dataclass(kw_only=True, slots=True)
class EnvConfig:
    """Which Gymnasium environment to train on."""

    id: str = "areal/Math-v0"
    """Registered env id (``import areal_env`` registers the areal/* ids)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments passed to ``gymnasium.make``."""


@dataclass(kw_only=True, slots=True)
class MetricsConfig:
    """Where run metrics go. JSONL is always written."""

    wandb_mode: str = "offline"
    """'offline' (default, no network), 'online' or 'disabled'."""
    wandb_project: str = "areal-env"
    """wandb project name."""
    tensorboard: bool = True
    """Also write TensorBoard event files under ``output_dir/tensorboard``."""
    plot: bool = True
    """Write a PNG of reward and loss curves at the end of the run."""
    progress: bool = True
    """Show a progress bar while training."""
    live_panel: bool | None = None
    """A live terminal panel (episodes running/finished/failed, staleness, reward trend,
    tokens/s, ETA) in place of the progress bar; None: on when stdout is a terminal,
    ``progress`` is on and ``CI`` is not set (docs/monitoring.md)."""
    dump_episodes_every: int = 10
    """Every N steps append whole episodes of the batch to ``output_dir/episodes.jsonl``
    (tokens, decoded text, loss mask, logprobs, versions); 0: never."""
    dump_episodes: int = 2
    """Episodes written at each dump, taken from different groups first."""

    def __post_init__(self) -> None:
        modes = ("offline", "online", "disabled")
        if self.wandb_mode not in modes:
            raise ValueError(f"metrics.wandb_mode must be one of {modes}, got {self.wandb_mode!r}")
        for key in ("dump_episodes_every", "dump_episodes"):
            if getattr(self, key) < 0:
                raise ValueError(f"metrics.{key} must be >= 0, got {getattr(self, key)}")


EVAL_SEED_OFFSET = 30_000_000
"""First held-out task seed of evals (``python -m areal_env.eval`` and the trainer's):
apart from the warm start's seed ranges (10M demos, 20M checks)."""


@dataclass(kw_only=True, slots=True)
class TrainEvalConfig:
    """The trainer's ``eval`` section: evaluation on held-out tasks during training.

    Held-out means task seeds ``seed_offset + i`` for ``i < episodes``, which the
    training stream (31-bit hashes of the run seed and group index) meets only by
    rare chance; an env with its own split takes it through ``env_kwargs`` (e.g.
    ``{dataset_split: test}``). The keys shared with ``python -m areal_env.eval``
    (``seed_offset``, ``correct_threshold``, ``max_concurrent``, ``episode_timeout_s``)
    mean the same there, so a run's ``config.yaml`` evaluated afterwards sees the
    same tasks.
    """

    every_steps: int = 0
    """Evaluate every N steps (and after the last step); 0: never."""
    episodes: int = 16
    """Held-out tasks per evaluation; each is played once greedily and ``k`` times sampled."""
    k: int = 4
    """Sampled episodes per task: the k of the reported ``eval/pass@k``."""
    seed_offset: int = EVAL_SEED_OFFSET
    """Seed of held-out task 0."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Merged over ``env.kwargs`` for the eval env only (a held-out split, if the env has one)."""
    correct_threshold: float = 1.0
    """An episode counts as correct when its reward is >= this."""
    max_concurrent: int = 64
    """Most eval episodes in flight at once (rollouts keep running beside them)."""
    episode_timeout_s: float | None = None
    """Time limit per eval episode in seconds (a timeout counts as not correct); None: none."""

    def __post_init__(self) -> None:
        for key, low in (("every_steps", 0), ("episodes", 1), ("k", 1), ("max_concurrent", 1)):
            if getattr(self, key) < low:
                raise ValueError(f"eval.{key} must be >= {low}, got {getattr(self, key)}")
        if self.seed_offset < 0:
            raise ValueError(f"eval.seed_offset must be >= 0, got {self.seed_offset}")
        if self.episode_timeout_s is not None and self.episode_timeout_s <= 0:
            raise ValueError(
                f"eval.episode_timeout_s must be > 0 or None, got {self.episode_timeout_s}"
            )

    def due(self, step: int, last_step: int) -> bool:
        """Whether to evaluate after ``step``: every ``every_steps`` and at the last step.

        Example:
            >>> [s for s in range(1, 8) if TrainEvalConfig(every_steps=3).due(s, 7)]
            [3, 6, 7]
        """
        return self.every_steps > 0 and (step % self.every_steps == 0 or step == last_step)


@dataclass(kw_only=True, slots=True)
class CheckpointConfig:
    """How often to save a resumable checkpoint."""

    every_steps: int = 50
    """Save every N training steps (and at the end); 0 saves only at the end."""
    keep_last: int = 2
    """How many step checkpoints to keep on disk."""

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise ValueError(f"checkpoint.every_steps must be >= 0, got {self.every_steps}")
        if self.keep_last < 1:
            raise ValueError(f"checkpoint.keep_last must be >= 1, got {self.keep_last}")


def resolve_device(device: str) -> str:
    """Turn 'auto' into the best available device string (see ``areal_env.devices``).

    Raises:
        ValueError: naming ``model.device`` for a name that is not a device type.
    """
    return devices.resolve_device(device)


def parse_args(argv: list[str] | None) -> tuple[Path | None, bool, list[str]]:
    """Split ``argv`` into (config file, resume flag, dotted overrides)."""
    parser = argparse.ArgumentParser(add_help=True)
    parser.add_argument("--config", type=Path, default=None, help="YAML config file")
    parser.add_argument("--resume", action="store_true", help="continue from last checkpoint")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rollout.n_samples=4")
    args = parser.parse_args(argv)
    for item in args.overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key.sub=value")
    return args.config, args.resume, list(args.overrides)


def load_config(schema: type[T], argv: list[str] | None = None) -> T:
    """Build ``schema`` from its defaults, an optional YAML file and dotted overrides.

    ``--resume`` sets ``recover=True`` when the schema has that field.

    Raises:
        ValueError: naming the dotted key for unknown keys, bad types or bad values.
    """
    path, resume, overrides = parse_args(argv)
    if resume:
        overrides.append("recover=true")
    try:
        cfg = OmegaConf.structured(schema)
        if path is not None:
            if not path.is_file():
                raise ValueError(f"--config: file not found: {path}")
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except (ConfigKeyError, ConfigAttributeError) as e:
        raise ValueError(f"unknown config key '{_key(e)}'") from None
    except OmegaConfBaseException as e:
        msg = str(e.msg).splitlines()[0]
        raise ValueError(f"bad value for config key '{_key(e)}': {msg}") from None


def to_yaml(cfg: Any) -> str:
    """Render a config object as YAML (saved beside every run for reproducibility)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _key(e: OmegaConfBaseException) -> str:
    full = getattr(e, "full_key", None) or ""
    key = getattr(e, "key", None) or ""
    return str(full or key)
