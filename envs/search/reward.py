"""Search-task reward: SQuAD-style normalised exact match and token F1 against any gold.

Normalisation (the SQuAD v1.1 evaluation script's): lower-case, drop punctuation,
drop the articles a/an/the, collapse white space. The answer is the last
``<answer>...</answer>`` span of the reply when there is one, else the whole reply.

Example:
    >>> exact_match("The Eiffel Tower!", ["eiffel tower"]), round(f1("Eiffel", ["Eiffel Tower"]), 3)
    (1.0, 0.667)
    >>> extract_answer("I think <answer>no</answer> wait <answer>Paris</answer>")
    'Paris'
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)

REWARD_KINDS = ("em", "f1")
"""Valid values of the env's ``reward`` option."""


def normalize_answer(text: str) -> str:
    """Lower-case, strip punctuation and articles, collapse spaces (SQuAD v1.1)."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def extract_answer(reply: str) -> str:
    """The last ``<answer>`` span's text, or the whole reply when there is none."""
    spans = ANSWER_RE.findall(reply)
    return (spans[-1] if spans else reply).strip()


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def f1(prediction: str, golds: Sequence[str]) -> float:
    """Best token-level F1 of the prediction against the gold answers."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for gold in golds:
        ref = normalize_answer(gold).split()
        common = sum((Counter(pred) & Counter(ref)).values())
        if not pred or not ref:
            best = max(best, float(pred == ref))
        elif common:
            precision, recall = common / len(pred), common / len(ref)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best
