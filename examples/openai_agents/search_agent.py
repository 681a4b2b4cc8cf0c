"""The OpenAI Agents SDK agent that ``examples/openai_agents/tiny.yaml`` trains.

An ordinary SDK ``Agent``: nothing in it knows about areal-env. The adapter
(``agent.name: openai_agents``) calls :func:`make_agent` once, then per episode
runs it with the SDK's ``Runner`` on a model that points at the episode's
session (every generated token is recorded for training), with the env's
``search`` tool added as an SDK function tool that steps the env.

The tiny embedded model only follows a prompt it was warm-started on, so the
trained agent adds no instructions (the env's question is the prompt). With a
real model, give it instructions, your own function tools and handoffs as
usual: :func:`make_triage_agent` shows the shape.
"""

from __future__ import annotations

from agents import Agent, function_tool


def make_agent() -> Agent:
    """The agent ``tiny.yaml`` trains: searches (the env's tool), then answers."""
    return Agent(name="searcher")


@function_tool
def spell_out(text: str) -> str:
    """Spell a name letter by letter (a user tool beside the env's search)."""
    return " ".join(text)


def make_triage_agent() -> Agent:
    """A richer agent for a real model: a function tool and a handoff to the searcher."""
    searcher = Agent(
        name="searcher",
        instructions="Search, then answer as <answer>...</answer>.",
    )
    return Agent(
        name="triage",
        instructions="Hand questions about facts to the searcher.",
        tools=[spell_out],
        handoffs=[searcher],
    )
