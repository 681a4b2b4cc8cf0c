"""Episode dumps: whole trained episodes in episodes.jsonl, consistent token by token."""

from __future__ import annotations

import logging

import pytest
from transformers import AutoTokenizer

from areal_env.episode_dump import EPISODES_FILE, EpisodeDumper, pick_episodes, read_episodes
from areal_env.testing import (
    PARITY_ENV_ID,
    SMALL_RUN_OVERRIDES,
    TINY_MODEL_OVERRIDES,
    make_sample,
    register_test_envs,
)
from areal_env.trainers import grpo
from areal_env.types import EpisodeBatch, Trajectory


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Three GRPO steps on ParityEnv, dumping three episodes after every step."""
    register_test_envs()
    out = tmp_path_factory.mktemp("dump") / "run"
    argv = [
        *TINY_MODEL_OVERRIDES,
        *SMALL_RUN_OVERRIDES,
        "train.steps=3",
        f"env.id={PARITY_ENV_ID}",
        "warm_start.enabled=false",
        "metrics.tensorboard=false",
        "metrics.plot=false",
        "checkpoint.every_steps=0",
        "metrics.dump_episodes_every=1",
        "metrics.dump_episodes=3",
        f"output_dir={out}",
    ]
    assert grpo.main(argv) == 0
    return out


def test_each_step_dumps_whole_episodes_from_different_groups_first(run):
    episodes = read_episodes(run / EPISODES_FILE)
    assert [e["step"] for e in episodes] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert all(e["version"] == e["step"] for e in episodes)
    assert [(e["group"], e["episode"]) for e in read_episodes(run / EPISODES_FILE, step=2)] == [
        (0, 0),
        (1, 0),
        (0, 1),
    ]
    for e in episodes:
        assert e["task_id"].startswith("parity:") and e["reward"] in (0.0, 1.0)
        assert e["messages"][0]["role"] == "user" and e["messages"][-1]["role"] == "assistant"
        assert isinstance(e["advantage"], float) and e["info"]["sample_index"] == e["episode"]
        assert e["samples"], "an episode with no trained tokens"


def test_dumped_tokens_masks_logprobs_and_versions_agree_and_decode_to_the_text(run):
    tokenizer = AutoTokenizer.from_pretrained(run / "final_model")
    for e in read_episodes(run / EPISODES_FILE):
        for s in e["samples"]:
            n = len(s["input_ids"])
            assert n == len(s["loss_mask"]) == len(s["logprobs"]) == len(s["versions"]) > 0
            assert s["text"] == tokenizer.decode(s["input_ids"])
            generated = [t for t, m in zip(s["input_ids"], s["loss_mask"], strict=True) if m]
            assert generated and s["completion_text"] == tokenizer.decode(generated)
            for m, lp, v in zip(s["loss_mask"], s["logprobs"], s["versions"], strict=True):
                if m:  # sampled by a policy no newer than the step's input
                    assert lp <= 0.0 and 0 <= v < e["step"]
                else:
                    assert v == -1
            # The reply is the completion with special tokens dropped: a subsequence of it.
            rest = iter(s["completion_text"])
            assert all(ch in rest for ch in e["messages"][-1]["content"])


class _BrokenTokenizer:
    def decode(self, ids):
        raise RuntimeError("cannot decode")


def _batch() -> EpisodeBatch:
    traj = Trajectory(samples=[make_sample([1, 2], [3, 4], version=0)], reward=1.0, task_id="t")
    return EpisodeBatch(groups=[[traj, traj]])


def test_a_failing_dump_is_logged_once_and_turns_dumping_off(tmp_path, caplog):
    dumper = EpisodeDumper(tmp_path, every=1, count=1, tokenizer=_BrokenTokenizer())
    with caplog.at_level(logging.ERROR):
        assert dumper.maybe_dump(_batch(), step=1, version=1) == 0
        assert dumper.maybe_dump(_batch(), step=2, version=2) == 0
    assert not dumper.enabled
    assert sum(r.levelno >= logging.ERROR for r in caplog.records) == 1


def test_dumps_follow_every_and_a_resume_drops_the_steps_it_will_redo(tmp_path):
    class Chars:
        def decode(self, ids):
            return "".join(chr(97 + i) for i in ids)

    dumper = EpisodeDumper(tmp_path, every=2, count=5, tokenizer=Chars())
    written = [dumper.maybe_dump(_batch(), step=s, version=s) for s in range(1, 5)]
    assert written == [0, 2, 0, 2]  # count is capped by the batch's episodes
    assert read_episodes(tmp_path / EPISODES_FILE)[0]["samples"][0]["text"] == "bcde"
    EpisodeDumper(tmp_path, every=2, count=1, tokenizer=Chars(), resume_after_step=2)
    assert {e["step"] for e in read_episodes(tmp_path / EPISODES_FILE)} == {2}
    EpisodeDumper(tmp_path, every=2, count=1, tokenizer=Chars())  # a fresh run: a fresh file
    assert not (tmp_path / EPISODES_FILE).exists()
    assert pick_episodes(_batch(), 0) == []
