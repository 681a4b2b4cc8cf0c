"""SearchEnv (``areal/Search-v0``): answer a question, searching a corpus with a tool.

Reset shows the question (after an optional system prompt). Each assistant
message either calls the ``search`` tool (one or several calls) and gets the
passages back as tool messages, or answers: the last ``<answer>...</answer>``
span, else the whole reply, scored by SQuAD-normalised exact match (``reward="em"``)
or token F1 (``reward="f1"``) against any gold answer. The episode is cut
(``truncated``, reward 0) when the turn limit is reached without an answer.

Step ``info``: ``searches`` and ``tool_errors`` so far, ``gold_retrieved`` (a
supporting passage was ever shown), and on the answer ``em``, ``f1``, ``answer``.

Example:
    >>> env = SearchEnv(num_entities=20)
    >>> obs, info = env.reset(seed=0)
    >>> call = {"id": "c", "type": "function",
    ...         "function": {"name": "search", "arguments": '{"query": "%s"}' % info["query"]}}
    >>> obs, reward, done, cut, step = env.step({"role": "assistant", "content": None,
    ...                                         "tool_calls": [call]})
    >>> obs[0]["role"], info["answers"][0] in obs[0]["content"], step["gold_retrieved"]
    ('tool', True, True)
    >>> reply = "<answer>" + info["answers"][0] + "</answer>"
    >>> env.step(reply)[1:3]
    (1.0, True)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from pathlib import Path
from typing import Any

from areal_env.data.source import choose_task_index
from areal_env.envs.base import AsyncEnv, Message, StepResult
from areal_env.envs.search.data import SYNTHETIC, QATask, SyntheticFacts, load_qa
from areal_env.envs.search.retrieval import BM25Retriever, Retriever
from areal_env.envs.search.reward import REWARD_KINDS, exact_match, extract_answer, f1
from areal_env.envs.search.tools import SEARCH_TOOL, run_search_calls
from areal_env.resources import ResourceRegistry
from areal_env.rollout.activity import phase

DEFAULT_SYSTEM_PROMPT = (
    "Answer the question. Call the search tool to look facts up, as often as you need; "
    "then give the final answer as <answer>...</answer>."
)
"""The system prompt of Search-v0 (None drops it)."""


class SearchEnv(AsyncEnv):
    """Multi-turn question answering with a search tool over a real index.

    Args:
        dataset: ``"synthetic"`` (invented facts, generated in code), a QA JSONL path, or
            a Hugging Face dataset (hub id or local folder; needs ``areal-env[hf]``).
        dataset_split: the split read from a Hugging Face dataset.
        corpus: passages JSONL searched for a QA file (required with ``retriever="bm25"``);
            must be None for the synthetic task, which brings its own.
        retriever: ``"bm25"`` (an embedded index, shared by the run's envs), or the
            ``http://host:port`` of a Search-R1-style retrieval server (ours:
            ``python -m areal_env.envs.search.server --corpus F``), checked at start-up.
        top_k: passages per search unless the call asks for another number.
        max_top_k: the most passages a call may ask for.
        max_passage_chars: each passage's text is cut to this many characters.
        max_turns: assistant messages before the episode is cut.
        reward: ``"em"`` or ``"f1"``.
        system_prompt: content of a leading system message; None for none.
        num_entities: size of the synthetic task (one fact passage per entity).
        data_seed: seed of the synthetic task.
        resources: the registry the index is shared through.
    """

    def __init__(
        self,
        dataset: str | Path = SYNTHETIC,
        corpus: str | Path | None = None,
        *,
        dataset_split: str = "train",
        retriever: str = "bm25",
        top_k: int = 3,
        max_top_k: int = 10,
        max_passage_chars: int = 300,
        max_turns: int = 4,
        reward: str = "em",
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        num_entities: int = 100,
        data_seed: int = 0,
        resources: ResourceRegistry | None = None,
    ) -> None:
        super().__init__(resources=resources)
        _check_options(top_k, max_top_k, max_passage_chars, max_turns, reward)
        if retriever != "bm25" and not retriever.startswith(("http://", "https://")):
            raise ValueError(
                "retriever must be 'bm25' or the http(s):// URL of a Search-R1-style "
                f"retrieval server, got {retriever!r}"
            )
        self.top_k, self.max_top_k = top_k, max_top_k
        self.max_passage_chars, self.max_turns = max_passage_chars, max_turns
        self.reward_kind, self.system_prompt = reward, system_prompt
        self.dataset_split = dataset_split
        self.tasks, self.retriever = self._load(dataset, corpus, retriever, num_entities, data_seed)
        self._task: QATask | None = None
        self._searches = self._errors = 0
        self._gold_retrieved = False

    def _load(
        self,
        dataset: str | Path,
        corpus: str | Path | None,
        retriever: str,
        num_entities: int,
        seed: int,
    ) -> tuple[list[QATask], Retriever]:
        if str(dataset) == SYNTHETIC:
            if retriever != "bm25":
                raise ValueError("the synthetic task searches its own corpus: use retriever='bm25'")
            if corpus is not None:
                raise ValueError("corpus must be None for the synthetic task (it has its own)")
            facts = self.resources.get(
                ("search/synthetic", num_entities, seed),
                lambda: SyntheticFacts(num_entities=num_entities, seed=seed),
            )
            index = self.resources.get(
                ("search/bm25/synthetic", num_entities, seed), lambda: BM25Retriever(facts.passages)
            )
            return facts.questions, index
        if retriever == "bm25" and corpus is None:
            raise ValueError(f"dataset={str(dataset)!r} needs corpus= (a passages JSONL file)")
        source = str(Path(dataset).resolve()) if Path(dataset).exists() else str(dataset)
        tasks = self.resources.get(
            ("search/qa", source, self.dataset_split),
            lambda: load_qa(dataset, split=self.dataset_split),
        )
        if retriever != "bm25":
            return tasks, self.resources.get(
                ("search/http", retriever), lambda: _reachable(retriever)
            )
        assert corpus is not None  # checked above
        path = Path(corpus).resolve()
        index = self.resources.get(
            ("search/bm25", str(path)), lambda: BM25Retriever.from_file(path)
        )
        return tasks, index

    @property
    def tools(self) -> list[dict[str, Any]]:
        """The ``search`` function schema."""
        return [SEARCH_TOOL]

    def demonstration(self) -> list[Message] | None:
        """Gold search-then-answer messages: search the task's query, answer in tags.

        For the synthetic task the query names the entity, so the search always
        shows the supporting passage; for a QA file it is the question itself.
        """
        if self._task is None:
            return None
        query = self._task.query or self._task.question
        call = {
            "id": "call_0",
            "type": "function",
            "function": {"name": "search", "arguments": json.dumps({"query": query})},
        }
        return [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "assistant", "content": f"<answer>{self._task.answers[0]}</answer>"},
        ]

    async def _areset(self, options: dict[str, Any]) -> tuple[list[Message], dict[str, Any]]:
        index = self._task_index(options)
        self._task = task = self.tasks[index]
        self._searches = self._errors = 0
        self._gold_retrieved = False
        obs: list[Message] = [{"role": "user", "content": task.question}]
        if self.system_prompt is not None:
            obs.insert(0, {"role": "system", "content": self.system_prompt})
        info = {
            "task_id": f"search:{index}",
            "task_index": index,
            "answers": list(task.answers),
            "answer": task.answers[0],
            "query": task.query or task.question,
        }
        return obs, info

    async def _astep(self, message: Message) -> StepResult:
        assert self._task is not None, "AsyncEnv.astep guarantees a reset came first"
        calls = message.get("tool_calls") or []
        if calls:
            with phase("tool", "search"):
                out = await run_search_calls(
                    calls,
                    self.retriever,
                    default_top_k=self.top_k,
                    max_top_k=self.max_top_k,
                    max_chars=self.max_passage_chars,
                )
            self._searches += out.searches
            self._errors += out.errors
            self._gold_retrieved |= bool(out.retrieved_ids & set(self._task.supporting_ids))
            cut = self.num_steps + 1 >= self.max_turns
            return out.messages, 0.0, False, cut, self._info()
        answer = extract_answer(message.get("content") or "")
        em, f1_score = exact_match(answer, self._task.answers), f1(answer, self._task.answers)
        reward = em if self.reward_kind == "em" else f1_score
        return [], reward, True, False, {**self._info(), "em": em, "f1": f1_score, "answer": answer}

    def _info(self) -> dict[str, Any]:
        return {
            "searches": self._searches,
            "tool_errors": self._errors,
            "gold_retrieved": self._gold_retrieved,
        }

    def _task_index(self, options: dict[str, Any]) -> int:
        return choose_task_index(
            options, size=len(self.tasks), rng=self.np_random, name="the QA tasks"
        )


def _reachable(url: str) -> Retriever:
    """An HTTP retriever for ``url``, checked now: an unreachable server fails at start-up.

    The check runs on a short-lived thread with its own event loop, so it works
    whether or not the caller is inside one (the retriever keeps a session per loop).
    """
    from areal_env.envs.search.http_retriever import HTTPRetriever

    retriever = HTTPRetriever(url)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, retriever.check()).result()
    return retriever


def _check_options(
    top_k: int, max_top_k: int, max_passage_chars: int, max_turns: int, reward: str
) -> None:
    for name, value in (
        ("top_k", top_k),
        ("max_top_k", max_top_k),
        ("max_passage_chars", max_passage_chars),
        ("max_turns", max_turns),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if top_k > max_top_k:
        raise ValueError(f"top_k ({top_k}) must be <= max_top_k ({max_top_k})")
    if reward not in REWARD_KINDS:
        raise ValueError(f"reward must be one of {REWARD_KINDS}, got {reward!r}")
