"""The error vocabulary of an episode: what can go wrong while one rollout runs.

A bad rollout is data, not a crash. Code anywhere below the rollout layer raises
one of these; ``rollout/episode.py`` is the one place that catches them and turns
them into a retried, dropped or penalised episode plus a counter in the metrics.
The hierarchy is flat on purpose: catch ``EpisodeError`` for "this episode failed"
and a subclass when the kind of failure changes what to do. A class lives here
only while some code raises it; tool and env families add theirs when they do.

Configuration mistakes are not episode errors: they raise ``ValueError`` naming
the offending key at start-up.

Example:
    >>> try:
    ...     raise ToolCallParseError("tool-call arguments are not valid JSON")
    ... except EpisodeError as e:
    ...     type(e).__name__
    'ToolCallParseError'
"""

from __future__ import annotations


class EpisodeError(Exception):
    """Base class: something made one episode fail; the run itself goes on."""


class ToolCallParseError(EpisodeError):
    """The model's output could not be turned into a tool call.

    Raised for malformed JSON arguments, an unknown function name, or tool-call
    markup the chat template's parser cannot read.
    """


class InferenceError(EpisodeError):
    """The inference engine or server failed to produce a completion.

    Raised for dropped connections, HTTP errors after retries, aborted requests
    and engine-side exceptions.
    """


class RewardError(EpisodeError):
    """The reward of a finished episode could not be computed.

    Raised when a verifier or judge fails in a way that must not be read as a
    zero reward (e.g. the judge model is unreachable).
    """


__all__ = [
    "EpisodeError",
    "InferenceError",
    "RewardError",
    "ToolCallParseError",
]
