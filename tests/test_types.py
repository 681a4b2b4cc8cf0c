"""EpisodeBatch.padded: what the trainer reads, row by row."""

from __future__ import annotations

import pytest

from areal_env.testing import make_sample
from areal_env.types import (
    PROMPT_VERSION,
    EpisodeBatch,
    GenerationResult,
    RowRef,
    Sample,
    SamplingParams,
    Trajectory,
)


def _sample(prompt: list[int], out: list[int], version: int, temperature: float = 1.0) -> Sample:
    return make_sample(prompt, out, version=version, logprob=-0.5, temperature=temperature)


def _traj(prompt: list[int], out: list[int], version: int, reward: float) -> Trajectory:
    return Trajectory(samples=[_sample(prompt, out, version)], reward=reward)


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
    assert p.advantages.tolist() == [[-1.0] * 5, [1.0] * 3 + [0.0] * 2]  # token level, padded
    assert p.group_index.tolist() == [0, 0]
    assert p.episode_index.tolist() == [1, 0]
    assert batch.padded(pad_id=0).group_index.tolist() == [0, 0, 1]


def test_padded_needs_a_row() -> None:
    batch = EpisodeBatch(groups=[[_traj([1], [2], 0, 1.0)]])
    with pytest.raises(ValueError, match="no rows selected"):
        batch.padded(pad_id=0, rows=[])


def test_rows_are_samples_and_carry_their_episode_group_and_temperature() -> None:
    split = Trajectory(
        samples=[_sample([1], [2, 3], 0), _sample([4, 5], [6], 1, temperature=0.5)], reward=1.0
    )
    single = _traj([1], [7], version=1, reward=0.0)
    other = _traj([8], [9], version=1, reward=0.5)
    batch = EpisodeBatch(groups=[[split, single], [other]], advantages=[[0.5, -0.5], [0.0]])
    assert batch.row_refs() == [
        RowRef(group=0, episode=0, sample=0),
        RowRef(group=0, episode=0, sample=1),
        RowRef(group=0, episode=1, sample=0),
        RowRef(group=1, episode=2, sample=0),
    ]
    p = batch.padded(pad_id=0)
    assert p.episode_index.tolist() == [0, 0, 1, 2]
    assert p.group_index.tolist() == [0, 0, 0, 1]
    assert p.temperatures.tolist() == [1.0, 0.5, 1.0, 1.0]
    assert p.rewards.tolist() == [1.0, 1.0, 0.0, 0.5]
    # Both samples of the split episode get its advantage.
    assert p.advantages[:, 0].tolist() == [0.5, 0.5, -0.5, 0.0]
    assert split.num_turns == 2 and split.num_generated == 3 and split.oldest_version == 0


def test_token_advantages_replace_episode_ones_and_must_fit_the_row() -> None:
    batch = EpisodeBatch(groups=[[_traj([1], [2, 3], 0, 1.0)]], advantages=[[1.0]])
    batch.token_advantages = [[0.0, 0.2, 0.3]]
    assert batch.padded(pad_id=0).advantages.tolist() == [pytest.approx([0.0, 0.2, 0.3])]
    batch.token_advantages = [[0.2, 0.3]]
    with pytest.raises(ValueError, match="token_advantages"):
        batch.padded(pad_id=0)


def test_a_sample_refuses_a_generation_drawn_with_other_parameters() -> None:
    s = _sample([1], [2], 0, temperature=1.0)
    assert s.accepts(SamplingParams(temperature=1.0, max_new_tokens=3))  # budget is not scoring
    assert not s.accepts(SamplingParams(temperature=0.7))
    result = GenerationResult(
        request_id="r",
        input_ids=(1,),
        output_ids=[3],
        output_logprobs=[-1.0],
        output_versions=[0],
        finish_reason="stop",
    )
    with pytest.raises(ValueError, match="cannot join"):
        s.append_generation(result, SamplingParams(top_p=0.9))
    assert Sample().temperature == 1.0
    assert _sample([1], [2], 0, temperature=0.0).temperature == 1.0  # greedy scored at 1
