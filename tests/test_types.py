"""EpisodeBatch.padded: what the trainer reads, row by row."""

from __future__ import annotations

import pytest

from areal_env.types import PROMPT_VERSION, EpisodeBatch, Trajectory


def _traj(prompt: list[int], out: list[int], version: int, reward: float) -> Trajectory:
    t = Trajectory(reward=reward)
    t.append_prompt(prompt)
    t.input_ids.extend(out)
    t.loss_mask.extend([1] * len(out))
    t.logprobs.extend([-0.5] * len(out))
    t.versions.extend([version] * len(out))
    return t


def test_padded_right_pads_the_selected_rows() -> None:
    short = _traj([5, 6], [7], version=3, reward=1.0)
    long = _traj([5, 6, 8], [9, 10], version=4, reward=0.0)
    other = _traj([1], [2], version=4, reward=0.5)
    batch = EpisodeBatch(groups=[[short, long], [other]], advantages=[[1.0, -1.0], [0.0]])
    p = batch.padded(pad_id=0, rows=[1, 0])
    assert p.input_ids.tolist() == [[5, 6, 8, 9, 10], [5, 6, 7, 0, 0]]
    assert p.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert p.loss_mask.tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 0, 0]]
    assert p.logprobs.tolist() == [[0, 0, 0, -0.5, -0.5], [0, 0, -0.5, 0, 0]]
    v = PROMPT_VERSION
    assert p.versions.tolist() == [[v, v, v, 4, 4], [v, v, 3, v, v]]
    assert p.rewards.tolist() == [0.0, 1.0]
    assert p.advantages.tolist() == [-1.0, 1.0]
    assert p.group_index.tolist() == [0, 0]
    assert batch.padded(pad_id=0).group_index.tolist() == [0, 0, 1]


def test_padded_needs_a_row() -> None:
    batch = EpisodeBatch(groups=[[_traj([1], [2], 0, 1.0)]])
    with pytest.raises(ValueError, match="no rows selected"):
        batch.padded(pad_id=0, rows=[])
