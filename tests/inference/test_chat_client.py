from __future__ import annotations

import pytest

from areal_env.inference.chat_client import ChatClient
from areal_env.testing import ScriptedEngine, char_tokenizer


@pytest.fixture
def tok():
    return char_tokenizer()


async def test_two_turns_keep_sampled_ids_and_append_only_new_messages(tok):
    engine = ScriptedEngine(replies=[tok.encode("12"), tok.encode("34")], logprob=-0.25, version=3)
    ep = ChatClient(engine, tok).episode()
    history = [{"role": "user", "content": "a"}]
    r1 = await ep.chat.completions.create(messages=history)
    engine.set_version(4)
    history += [r1.choices[0].message.to_dict(), {"role": "tool", "content": "x"}]
    r2 = await ep.chat.completions.create(messages=history)
    traj = ep.trajectory

    # The second prompt is exactly our first sequence plus the new tokens.
    assert list(engine.requests[1].input_ids[: len(engine.requests[0].input_ids)]) == list(
        engine.requests[0].input_ids
    )
    rendered = ChatClient(engine, tok).render(
        [*history, r2.choices[0].message.to_dict()], None, generation_prompt=False
    )
    assert tok.decode(traj.input_ids) + "\n" == rendered
    gen = [i for i, m in enumerate(traj.loss_mask) if m]
    assert [traj.input_ids[i] for i in gen] == tok.encode("12") + [tok.eos_token_id] + tok.encode(
        "34"
    ) + [tok.eos_token_id]
    assert [traj.versions[i] for i in gen] == [3, 3, 3, 4, 4, 4]
    assert all(traj.logprobs[i] == -0.25 for i in gen)
    assert traj.num_turns == 2 and ep.drift_events == 0 and not ep.segments


async def test_template_that_rewrites_history_splits_segments_instead_of_retokenizing(tok):
    # A template that drops earlier assistant content (as thinking-strippers do).
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}:"
        "{% if m['role'] != 'assistant' or loop.last %}{{ m['content'] }}{% endif %}"
        "<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant:{% endif %}"
    )
    engine = ScriptedEngine(replies=[tok.encode("77")])
    ep = ChatClient(engine, tok).episode()
    history = [{"role": "user", "content": "q"}]
    r1 = await ep.chat.completions.create(messages=history)
    history += [r1.choices[0].message.to_dict(), {"role": "user", "content": "more"}]
    history_before = list(history)
    await ep.chat.completions.create(messages=history)
    assert ep.drift_events == 1
    assert len(ep.all_segments()) == 2
    first = ep.segments[0]
    assert [t for t, m in zip(first.input_ids, first.loss_mask, strict=True) if m] == tok.encode(
        "77"
    ) + [tok.eos_token_id]
    assert history == history_before


async def test_tool_calls_are_parsed_and_malformed_ones_reported(tok):
    good = '<tool_call>{"name": "calc", "arguments": {"expr": "1+1"}}</tool_call>'
    bad = "<tool_call>{not json}</tool_call>"
    engine = ScriptedEngine(replies=[tok.encode(good), tok.encode(bad)])
    client = ChatClient(engine, tok)
    r = await client.episode().chat.completions.create(messages=[{"role": "user", "content": "x"}])
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert msg.tool_calls[0]["function"] == {"name": "calc", "arguments": '{"expr": "1+1"}'}
    r = await client.episode().chat.completions.create(messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content == bad
    assert "not valid JSON" in r.parse_errors[0]


async def test_call_arguments_override_default_sampling(tok):
    engine = ScriptedEngine(replies=[tok.encode("1")])
    client = ChatClient(engine, tok)
    await client.episode().chat.completions.create(
        messages=[{"role": "user", "content": "x"}], max_tokens=3, temperature=0.0, stop="\n"
    )
    s = engine.requests[0].sampling
    assert (s.max_new_tokens, s.temperature, s.stop) == (3, 0.0, ("\n",))
    assert s.stop_token_ids == (tok.eos_token_id,)


async def test_empty_messages_is_an_error(tok):
    client = ChatClient(ScriptedEngine(replies=[[5]]), tok)
    with pytest.raises(ValueError, match="messages"):
        await client.episode().chat.completions.create(messages=[])
