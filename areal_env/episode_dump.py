"""Whole training episodes, written as they were trained on, for drill-down.

Metrics say *that* the reward moved; to see *why*, one reads episodes. Every
``metrics.dump_episodes_every`` steps the trainer appends ``metrics.dump_episodes``
episodes of the batch to ``output_dir/episodes.jsonl``, one JSON object per
episode:

* ``step``, ``version`` (the trainer's weight version after the step), ``group``
  and ``episode`` (position in the batch), ``task_id``, ``reward``, ``advantage``
  (the episode's, when the estimator gives one per episode), ``num_turns``,
  ``truncated``, ``messages`` (the chat as the agent saw it), ``info``, ``metrics``;
* ``samples``: per trained token sequence, ``input_ids``, ``text`` (all of
  ``input_ids`` decoded), ``completion_text`` (only the tokens with loss mask 1,
  decoded), ``loss_mask``, ``logprobs``, ``versions`` (the weight version each
  token was sampled at; -1 for prompt tokens) and ``temperature``.

The token lists are exactly the ones the trainer's loss saw, so a suspicious
logprob or a stale token can be traced to its text. Episodes are taken from
different groups first (group 0 episode 0, group 1 episode 0, ...), so two
dumped episodes show two tasks. :func:`read_episodes` reads the file back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from areal_env.evaluation import to_jsonable
from areal_env.metrics import drop_rows_after_step
from areal_env.types import EpisodeBatch, Sample, Trajectory

__all__ = ["EPISODES_FILE", "EpisodeDumper", "episode_record", "pick_episodes", "read_episodes"]

logger = logging.getLogger(__name__)

EPISODES_FILE = "episodes.jsonl"
"""File name under ``output_dir``."""


def pick_episodes(batch: EpisodeBatch, count: int) -> list[tuple[int, int]]:
    """``(group, episode)`` of ``count`` episodes, one per group before a second from any.

    Example:
        >>> from areal_env.types import Trajectory
        >>> batch = EpisodeBatch(groups=[[Trajectory()] * 2, [Trajectory()] * 2])
        >>> pick_episodes(batch, 3)
        [(0, 0), (1, 0), (0, 1)]
    """
    picked: list[tuple[int, int]] = []
    longest = max((len(g) for g in batch.groups), default=0)
    for e in range(longest):
        for g, group in enumerate(batch.groups):
            if e < len(group) and len(picked) < count:
                picked.append((g, e))
    return picked


def sample_record(sample: Sample, tokenizer: Any) -> dict[str, Any]:
    """One sample's tokens, their text and per-token training data."""
    completion = [t for t, m in zip(sample.input_ids, sample.loss_mask, strict=True) if m]
    return {
        "input_ids": list(sample.input_ids),
        "text": tokenizer.decode(sample.input_ids),
        "completion_text": tokenizer.decode(completion),
        "loss_mask": list(sample.loss_mask),
        "logprobs": list(sample.logprobs),
        "versions": list(sample.versions),
        "temperature": sample.temperature,
        "num_turns": sample.num_turns,
    }


def episode_record(
    batch: EpisodeBatch,
    group: int,
    episode: int,
    *,
    step: int,
    version: int,
    tokenizer: Any,
) -> dict[str, Any]:
    """The JSON object of one episode of ``batch`` (see the module docstring)."""
    traj: Trajectory = batch.groups[group][episode]
    advantage = None
    if batch.advantages is not None:
        advantage = batch.advantages[group][episode]
    return {
        "step": step,
        "version": version,
        "group": group,
        "episode": episode,
        "task_id": traj.task_id,
        "reward": traj.reward,
        "advantage": advantage,
        "num_turns": traj.num_turns,
        "truncated": traj.truncated,
        "messages": to_jsonable(traj.messages),
        "info": to_jsonable(traj.info),
        "metrics": to_jsonable(traj.metrics),
        "samples": [sample_record(s, tokenizer) for s in traj.samples],
    }


class EpisodeDumper:
    """Appends sample episodes to ``output_dir/episodes.jsonl`` every ``every`` steps.

    A dump failure (an odd tokenizer, a full disk) is logged once and dumping
    stops: drill-down data must never end a training run.

    Args:
        output_dir: the run's folder.
        every: dump after steps that are multiples of this; 0 turns dumping off.
        count: episodes per dump.
        tokenizer: decodes token ids to text.
        resume_after_step: on resume, rows of later steps (which will be trained
            again) are dropped, as ``metrics.jsonl`` does.
    """

    def __init__(
        self,
        output_dir: str | Path,
        *,
        every: int,
        count: int,
        tokenizer: Any,
        resume_after_step: int | None = None,
    ) -> None:
        self.path = Path(output_dir) / EPISODES_FILE
        self.every = every
        self.count = count
        self.tokenizer = tokenizer
        self.enabled = every > 0 and count > 0
        if self.enabled and self.path.exists():
            if resume_after_step is None:  # a fresh run in an old folder starts a fresh file
                self.path.unlink()
            else:
                drop_rows_after_step(self.path, resume_after_step)

    def due(self, step: int) -> bool:
        """Whether ``step`` is a dump step."""
        return self.enabled and step % self.every == 0

    def maybe_dump(self, batch: EpisodeBatch, *, step: int, version: int) -> int:
        """Append the batch's sample episodes if ``step`` is a dump step; how many were written."""
        if not self.due(step):
            return 0
        try:
            records = [
                episode_record(batch, g, e, step=step, version=version, tokenizer=self.tokenizer)
                for g, e in pick_episodes(batch, self.count)
            ]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
        except Exception:
            logger.exception("writing %s failed; episode dumps are off for this run", self.path)
            self.enabled = False
            return 0
        return len(records)


def read_episodes(path: str | Path, *, step: int | None = None) -> list[dict[str, Any]]:
    """The episodes of an ``episodes.jsonl`` file (of one ``step`` when given)."""
    return [r for r in _lines(Path(path)) if step is None or r["step"] == step]


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
