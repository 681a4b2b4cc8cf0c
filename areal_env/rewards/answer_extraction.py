r"""The final answer of a reply, and how to hand it and the gold answer to Math-Verify.

Math-Verify finds an answer anywhere in a text on its own, but on a long reply it can
pick the wrong one: in ``"The answer is 42. Check: 42 + 8 = 50."`` its ``answer ... =``
pattern reaches past the sentence to the 50, and a ``#### 72`` line followed by a
check scores the check's last number. A grader reads the reply the other way round:
the boxed answer first, then the stated one, and only then the last number. So we
pick the answer span here (plain regular expressions, cheap enough for the event
loop) and hand Math-Verify that span alone.

Extraction rules, first that applies wins:

1. **Boxed.** The last ``\boxed{...}`` or ``\fbox{...}`` (balanced braces; ``\boxed 5``
   too). Boxes that directly precede it, separated only by ``,``, ``and``, ``or``,
   ``$`` or spaces, join it as a list (``$\boxed{3}$ and $\boxed{5}$`` is ``3, 5``);
   a box nested in a box is read from the inside. An unclosed box does not count.
2. **Stated answer.** The last ``answer is``/``answers are``/``answer:``/``answer =``
   (with an optional ``final``, any case, ``**`` markdown allowed) or ``####``. The
   answer runs from there to the end of its sentence: the first full stop followed by
   a space or the end, or the end of the line (a ``\[ ... \]`` or ``$$ ... $$`` block
   that opens it is taken whole). Checks written after it do not count.
3. **Whole reply.** Otherwise the reply goes to Math-Verify as it is, which takes
   its last LaTeX span or number.

The span is then written the way Math-Verify reads it best (:attr:`FinalAnswer.candidates`,
tried in order until one parses): LaTeX without delimiters inside ``\boxed{}``; text
with ``$`` delimiters as it is; plain text, plain arithmetic included (``2^10``, where
``^`` must group from the right), with its ``answer is`` phrase, so that in
``answer is 12, not 10`` the stated 12 is read and not the last number; and a short
bare reply such as ``+12`` or ``-.5``, which Math-Verify reads as nothing, inside
``\boxed{}`` as a last try. Numbers in ``e`` notation with a decimal point or a
mantissa of 1 (``6.72e-5``, ``1e-6``) are written out as decimals first, since
Math-Verify reads the ``e`` as Euler's number. A gold answer without delimiters is
read as LaTeX inside ``\boxed{}`` (MATH-500's golds are bare LaTeX such as
``\left( 3, \frac{\pi}{2} \right)``, which Math-Verify alone reads as 3).

One verdict is ours rather than Math-Verify's: an answer written as a set
``\{...\}`` never equals a gold written in brackets (an ordered tuple or an interval
such as ``(2,4)``), which Math-Verify accepts when the elements agree.

Example:
    >>> final_answer("The answer is 42. Check: 42 + 8 = 50.").text
    '42'
    >>> final_answer(r"so $\boxed{3}$ and $\boxed{5}$").candidates
    ('\\boxed{3, 5}',)
"""

from __future__ import annotations

import decimal
import re
from dataclasses import dataclass
from typing import Literal

MAX_SHORT_REPLY_CHARS = 40
"""A bare reply up to this long is also tried as LaTeX inside ``\\boxed{}``."""

MAX_BOX_GAP_CHARS = 40
"""Boxes at most this far apart (and only separators between) are read as one list."""

_BOX = re.compile(r"\\(?:boxed|fbox)\b\s*")
_BRACE = re.compile(r"(?<!\\)[{}]")
_TOKEN = re.compile(r"[^\s$]+")
_BOX_JOINER = re.compile(r"[\s$,]*(?:,|\band\b|\bor\b)?[\s$,]*")
_PHRASE = re.compile(
    r"####|\b(?:final\s+)?answers?\s*(?:\*\*)?\s*(?:(?:is|are|would\s+be|will\s+be)\b\s*:?|[:=])",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"\.(?=\s|$)")
_DISPLAY_CLOSERS = {"\\[": "\\]", "$$": "$$", "\\(": "\\)"}
# 6.72e-5, -1.5E+3, 1e-6: a decimal point or a mantissa of exactly 1 says "scientific".
_SCIENTIFIC = re.compile(r"(?<![\w.\\])(-?(?:\d+\.\d+|1))[eE]([+-]?\d{1,3})(?![\w.])")
_LATEX_HINTS = ("\\", "^", "_", "{")
# Plain arithmetic such as 2^10 is read as an expression, where ^ groups from the right
# as it should (LaTeX parsing reads 9^9^9^9 as ((9^9)^9)^9).
_ARITHMETIC = re.compile(r"[0-9\s.+\-*/^()]+")
_DELIMITER = re.compile(r"(?<!\\)\$|\\\(|\\\[")  # $ (not \$), \( or \[


@dataclass(frozen=True, slots=True)
class FinalAnswer:
    r"""The answer span a reply states, and what to hand Math-Verify for it.

    Example:
        >>> final_answer("#### 72\nCheck: 72 + 8 = 80")
        FinalAnswer(text='72', rule='stated', candidates=('#### 72', '\\boxed{72}'))
    """

    text: str
    """The answer as written (box contents, the stated answer, or the whole reply)."""
    rule: Literal["boxed", "stated", "reply"]
    """Which extraction rule found it."""
    candidates: tuple[str, ...]
    """Texts for ``math_verify.parse``, in order; the first that parses is used."""


def final_answer(reply: str) -> FinalAnswer:
    r"""The final answer of ``reply``: boxed, else stated, else the whole reply.

    Example:
        >>> final_answer(r"First \boxed{3}; no, the answer is \boxed{5}.").text
        '5'
    """
    boxed = _last_boxed(reply)
    if boxed is not None:
        text = _expand_scientific(boxed)
        return FinalAnswer(text, "boxed", (f"\\boxed{{{text}}}",))
    stated = _last_stated(reply)
    if stated is not None:
        phrase, text = stated
        text = _expand_scientific(text)
        if _DELIMITER.search(text):
            candidates: tuple[str, ...] = (text,)
        elif any(h in text for h in _LATEX_HINTS) and not _ARITHMETIC.fullmatch(text):
            candidates = (f"\\boxed{{{text}}}", text)
        else:
            candidates = (f"{phrase} {text}", f"\\boxed{{{text}}}")
        return FinalAnswer(text, "stated", candidates)
    text = _expand_scientific(reply.strip())
    if len(text) <= MAX_SHORT_REPLY_CHARS and "\n" not in text and not _DELIMITER.search(text):
        return FinalAnswer(text, "reply", (text, f"\\boxed{{{text}}}"))
    return FinalAnswer(text, "reply", (text,))


def gold_candidates(gold: str) -> tuple[str, ...]:
    r"""What to hand ``math_verify.parse`` for a gold answer, in order.

    Example:
        >>> gold_candidates(r"\frac{1}{2}"), gold_candidates("$x$")
        (('\\boxed{\\frac{1}{2}}', '\\frac{1}{2}'), ('$x$',))
    """
    gold = gold.strip()
    if "\\boxed" in gold or _DELIMITER.search(gold):
        return (gold,)
    return (f"\\boxed{{{gold}}}", gold)


def set_against_tuple(answer: str, gold: str) -> bool:
    r"""True when ``answer`` is a set ``\{...\}`` and ``gold`` a bracketed tuple or interval.

    Such a pair is never equal, whatever the elements; Math-Verify compares the
    elements of ``\{4,2\}`` and ``(2,4)`` and says they are.

    Example:
        >>> set_against_tuple(r"\{4, 2\}", "(2,4)"), set_against_tuple(r"\{2\}", "2")
        (True, False)
    """
    a = re.sub(r"\s+|\$", "", answer)
    g = re.sub(r"\s+|\$|\\left|\\right", "", gold)
    return (
        a.startswith("\\{")
        and a.endswith("\\}")
        and g[:1] in "(["
        and g[-1:] in ")]"
        and len(g) > 1
        and "," in g
    )


def _last_boxed(text: str) -> str | None:
    """The contents of the last complete box, with the boxes listed just before it."""
    first = _BOX.search(text)
    if first is None:
        return None
    closing = _matching_braces(text, first.end())
    boxes: list[tuple[int, int, str]] = []  # (start, end, contents) of outermost boxes
    for m in _BOX.finditer(text, first.start()):
        if boxes and m.start() < boxes[-1][1]:
            continue  # nested in the previous box: read with it
        start = m.end()
        if start < len(text) and text[start] == "{":
            end = closing.get(start)
            if end is None:  # unclosed: truncated output, no answer here
                continue
            boxes.append((m.start(), end + 1, _unbox(text, closing, start + 1, end)))
        elif (token := _TOKEN.match(text, start)) is not None:  # \boxed 5
            boxes.append((m.start(), token.end(), token.group().rstrip(".,}")))
    if not boxes:
        return None
    listed = [boxes[-1]]
    for box in reversed(boxes[:-1]):
        between = text[box[1] : listed[-1][0]]
        if len(between) > MAX_BOX_GAP_CHARS or not _BOX_JOINER.fullmatch(between):
            break
        listed.append(box)
    return ", ".join(contents for _, _, contents in reversed(listed))


def _unbox(text: str, closing: dict[int, int], start: int, end: int) -> str:
    """``text[start:end]``, the contents of a box; of the inner box when it is just a box."""
    while True:
        m = _BOX.match(text, start + len(text[start:end]) - len(text[start:end].lstrip()))
        if m is None or m.end() >= end or text[m.end()] != "{":
            break
        close = closing.get(m.end())
        if close is None or close >= end or text[close + 1 : end].strip():
            break
        start, end = m.end() + 1, close
    return text[start:end].strip()


def _matching_braces(text: str, start: int) -> dict[int, int]:
    r"""Index of each ``{`` from ``start`` on that closes -> index of its ``}`` (not ``\{``)."""
    closing: dict[int, int] = {}
    opened: list[int] = []
    for m in _BRACE.finditer(text, start):
        if m.group() == "{":
            opened.append(m.start())
        elif opened:
            closing[opened.pop()] = m.start()
    return closing


def _last_stated(text: str) -> tuple[str, str] | None:
    """``(phrase, answer)`` for the last stated answer; None if there is none."""
    matches = list(_PHRASE.finditer(text))
    for m in reversed(matches):
        rest = text[m.end() :].lstrip(" \t\n*:")
        answer = _sentence(rest).strip(" \t*").rstrip(".").strip()
        if answer:
            return m.group().strip(), answer
    return None


def _sentence(rest: str) -> str:
    """The start of ``rest`` up to its end of sentence or line; a display block whole."""
    for opener, closer in _DISPLAY_CLOSERS.items():
        if rest.startswith(opener):
            end = rest.find(closer, len(opener))
            if end != -1:
                return rest[: end + len(closer)]
    line = rest.split("\n", 1)[0]
    m = _SENTENCE_END.search(line)
    return line if m is None else line[: m.start()]


def _expand_scientific(text: str) -> str:
    """``6.72e-5`` -> ``0.0000672``: Math-Verify would read the ``e`` as Euler's number."""

    def expand(m: re.Match[str]) -> str:
        try:
            return format(decimal.Decimal(f"{m.group(1)}e{m.group(2)}"), "f")
        except decimal.InvalidOperation:
            return m.group()

    return _SCIENTIFIC.sub(expand, text)


__all__ = ["FinalAnswer", "final_answer", "gold_candidates", "set_against_tuple"]
