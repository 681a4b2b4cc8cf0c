"""areal/Search-v0: tasks, the search tool, rewards, bad input."""

from __future__ import annotations

import json
import sys

import gymnasium as gym
import pytest

from areal_env.envs.search.data import SyntheticFacts, load_qa
from areal_env.envs.search.env import SearchEnv
from areal_env.envs.search.reward import exact_match, extract_answer, f1, normalize_answer


def call(query: str, **extra) -> dict:
    args = json.dumps({"query": query, **extra})
    return {"id": "c1", "type": "function", "function": {"name": "search", "arguments": args}}


def act(*calls: dict) -> dict:
    return {"role": "assistant", "content": None, "tool_calls": list(calls)}


def test_squad_normalisation_em_and_f1():
    assert normalize_answer("The  Eiffel-Tower, an icon!") == "eiffeltower icon"
    assert exact_match("the Paris", ["paris", "London"]) == 1.0
    assert exact_match("Paris France", ["paris"]) == 0.0
    assert f1("Paris France", ["paris"]) == pytest.approx(2 / 3)
    assert f1("", ["paris"]) == 0.0 and f1("", [""]) == 1.0
    assert extract_answer("a <answer>x</answer> b <answer> y </answer>") == "y"
    assert extract_answer("just this") == "just this"


def test_synthetic_questions_need_the_search_tool():
    facts = SyntheticFacts(num_entities=30, seed=1)
    assert len(facts.passages) == len(facts.questions) == 30
    assert len({q.question for q in facts.questions}) == 30
    for q in facts.questions[:5]:
        assert q.answers[0] not in q.question  # the answer is only in the corpus
    assert SyntheticFacts(num_entities=30, seed=1).questions == facts.questions


def test_search_then_answer_earns_the_reward_and_reports_what_happened():
    env = gym.make("areal/Search-v0", num_entities=20).unwrapped
    obs, info = env.reset(seed=5)
    assert env.tools[0]["function"]["name"] == "search"
    assert obs[-1]["content"].startswith("What is")
    obs, reward, done, cut, step = env.step(act(call(info["query"], top_k=2)))
    assert (reward, done, cut) == (0.0, False, False)
    assert obs[0]["role"] == "tool" and info["answer"] in obs[0]["content"]
    assert step["searches"] == 1 and step["gold_retrieved"] and step["tool_errors"] == 0
    _, reward, done, _, step = env.step(f"So: <answer>{info['answer'].lower()}</answer>")
    assert (reward, done, step["em"], step["f1"]) == (1.0, True, 1.0, 1.0)


def test_a_wrong_answer_scores_zero_and_f1_reward_gives_partial_credit():
    env = SearchEnv(num_entities=20, reward="f1")
    _, info = env.reset(seed=5)
    _, reward, done, _, step = env.step("<answer>Nowhere</answer>")
    assert (reward, done, step["em"], step["gold_retrieved"]) == (0.0, True, 0.0, False)
    env.reset(seed=5)
    _, reward, _, _, step = env.step(f"<answer>{info['answer']} city</answer>")
    assert step["em"] == 0.0 and reward == pytest.approx(2 / 3)


def test_turn_limit_truncates_with_the_last_tool_results():
    env = SearchEnv(num_entities=20, max_turns=2)
    env.reset(seed=0)
    assert env.step(act(call("a")))[3] is False
    obs, reward, done, cut, _ = env.step(act(call("b")))
    assert cut and not done and reward == 0.0 and obs[0]["role"] == "tool"


def test_passages_are_cut_to_the_configured_length():
    env = SearchEnv(num_entities=20, max_passage_chars=10)
    _, info = env.reset(seed=0)
    obs = env.step(act(call(info["query"], top_k=1)))[0]
    body = obs[0]["content"].split("\n", 1)[1]
    assert body.endswith("...") and len(body) <= 13


def test_envs_of_one_registry_share_one_index():
    from areal_env.resources import ResourceRegistry

    registry = ResourceRegistry()
    a, b = (
        SearchEnv(num_entities=20, resources=registry),
        SearchEnv(num_entities=20, resources=registry),
    )
    assert a.retriever is b.retriever and a.tasks is b.tasks
    assert SearchEnv(num_entities=21, resources=registry).retriever is not a.retriever


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top_k": 0}, "top_k"),
        ({"top_k": 5, "max_top_k": 3}, "max_top_k"),
        ({"reward": "bleu"}, "reward"),
        ({"retriever": "tfidf"}, "retriever"),
        ({"max_turns": 0}, "max_turns"),
        ({"corpus": "x.jsonl"}, "corpus must be None"),
        ({"dataset": "qa.jsonl"}, "needs corpus"),
    ],
)
def test_bad_options_fail_at_construction_naming_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SearchEnv(**kwargs)


def test_bad_qa_files_name_the_file_and_line(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "q", "answers": ["a"]}\n{"question": "q", "answers": []}\n')
    with pytest.raises(ValueError, match=r"qa.jsonl:2: the gold answers"):
        load_qa(path)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_qa(tmp_path / "missing.jsonl")


def test_qa_and_corpus_files_in_the_hotpotqa_format(tmp_path):
    # The HotpotQA path below, on a small file made here: runs on a plain clone.
    qa, corpus = _hotpot_like_files(tmp_path)
    env = gym.make("areal/Search-v0", dataset=str(qa), corpus=str(corpus)).unwrapped
    _, info = env.reset(seed=0)
    assert info["query"] == "Who founded Zorblat?"
    obs, _, _, _, step = env.step(act(call(info["query"])))
    assert "Queen Adela" in obs[0]["content"] and step["gold_retrieved"]
    assert env.step("<answer>queen adela</answer>")[1] == 1.0


def test_hotpotqa_dev500(shared_data, tmp_path, monkeypatch):
    folder = shared_data / "hotpotqa_dev500"
    monkeypatch.setenv("HOME", str(tmp_path))  # the index cache goes where the test says
    from areal_env.envs.search import retrieval

    monkeypatch.setattr(retrieval.os, "access", lambda path, mode: False)
    env = SearchEnv(folder / "qa.jsonl", folder / "corpus.jsonl")
    assert len(env.tasks) == 500
    retrieved = 0
    for i in range(40):
        _, info = env.reset(options={"task_index": i})
        retrieved += env.step(act(call(info["query"], top_k=5)))[4]["gold_retrieved"]
        gold = env.step(f"<answer>{info['answer']}</answer>")[1]
        env.reset(options={"task_index": i})
        wrong = env.step("<answer>certainly not this</answer>")[1]
        assert (gold, wrong) == (1.0, 0.0)
    assert retrieved / 40 > 0.7


def _hotpot_like_files(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    passages = [
        {"id": "p1", "title": "Zorblat", "text": "Zorblat was founded by Queen Adela."},
        {"id": "p2", "title": "Flimton", "text": "Flimton is a river."},
    ]
    corpus.write_text("".join(json.dumps(p) + "\n" for p in passages))
    qa = tmp_path / "qa.jsonl"
    record = {
        "question": "Who founded Zorblat?",
        "answers": ["Queen Adela"],
        "supporting_passage_ids": ["p1"],
    }
    qa.write_text(json.dumps(record) + "\n")
    return qa, corpus


def test_search_through_our_retrieval_server(tmp_path):
    import subprocess
    import sys

    qa, corpus = _hotpot_like_files(tmp_path)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "areal_env.envs.search.server",
            "--corpus",
            str(corpus),
            "--port",
            "0",
            "--cache-root",
            str(tmp_path / "cache"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = server.stdout.readline().split()[-1]
        env = SearchEnv(qa, retriever=url)
        _, info = env.reset(seed=0)
        obs, _, _, _, step = env.step(act(call(info["query"])))
        assert "Queen Adela" in obs[0]["content"] and step["gold_retrieved"]
        env.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_an_unreachable_retrieval_server_fails_at_start_up_naming_the_url(tmp_path):
    from areal_env.envs.search.http_retriever import RetrieverError

    qa, _ = _hotpot_like_files(tmp_path)
    with pytest.raises(RetrieverError, match="127.0.0.1:9"):
        SearchEnv(qa, retriever="http://127.0.0.1:9")
    with pytest.raises(ValueError, match="synthetic task searches its own corpus"):
        SearchEnv(retriever="http://127.0.0.1:9")


def test_a_hugging_face_dataset_folder_is_read_by_split(tmp_path):
    """``dataset=`` a folder saved by ``datasets`` (hub datasets load the same way)."""
    import datasets  # the hf extra; a dev dependency

    rows = {
        "train": [{"question": "Who?", "answer": "Zed"}, {"question": "Where?", "answer": "Ur"}],
        "validation": [{"question": "When?", "golden_answers": ["1901", "nineteen oh one"]}],
    }
    saved = tmp_path / "saved"
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in rows.items()}).save_to_disk(
        saved
    )
    assert [t.answers for t in load_qa(saved)] == [("Zed",), ("Ur",)]
    (task,) = load_qa(saved, split="validation")
    assert task.question == "When?" and task.answers == ("1901", "nineteen oh one")
    with pytest.raises(ValueError, match=r"no split 'test'.*validation"):
        load_qa(saved, split="test")
    # A folder of data files goes through load_dataset; SQuAD-style answer objects work.
    files = tmp_path / "files"
    files.mkdir()
    record = {"question": "Which?", "answers": {"text": ["This one"], "answer_start": [0]}}
    (files / "train.jsonl").write_text(json.dumps(record) + "\n")
    (task,) = load_qa(files)
    assert task.answers == ("This one",)
    # And the env takes it, with a corpus to search.
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "p1", "title": "Zed", "text": "Zed did it."}) + "\n")
    env = SearchEnv(dataset=str(saved), corpus=corpus, dataset_split="train")
    _, info = env.reset(options={"task_index": 0})
    assert info["answers"] == ["Zed"] and env.step("<answer>Zed</answer>")[1] == 1.0


def test_a_dataset_that_cannot_load_is_named(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"cannot load QA dataset .*nothing-here"):
        load_qa(tmp_path / "nothing-here")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(ImportError, match=r"areal-env\[hf\]"):
        load_qa(tmp_path / "nothing-here")
