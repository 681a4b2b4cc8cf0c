from __future__ import annotations

import asyncio
import copy
import json
import logging

import openai
import pytest
from openai.types import CompletionUsage
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionMessage,
    ChatCompletionMessageFunctionToolCall,
)

from areal_env.inference.chat_client import (
    EPISODE_METRICS,
    ChatClient,
    SamplingConfig,
    generation_of,
)
from areal_env.models.tiny import CHAT_TEMPLATE
from areal_env.testing import ScriptedEngine, char_tokenizer

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "look something up",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
]

# The tiny template, but tool-call arguments go through `| tojson` as in Qwen2.5,
# Llama 3.1 and Hermes: it needs dicts, and renders canonical JSON.
TOJSON_TEMPLATE = CHAT_TEMPLATE.replace(
    '"arguments": {{ call["function"]["arguments"] }}',
    '"arguments": {{ call["function"]["arguments"] | tojson }}',
)

# Drops <think>...</think> from every assistant turn but the last message, as
# reasoning-model templates do: the prefix sampled with thinking cannot be extended.
THINK_STRIPPING_TEMPLATE = (
    "{%- for m in messages -%}"
    "<|im_start|>{{ m['role'] }}{{ '\\n' }}"
    "{%- if m['role'] == 'assistant' and not loop.last -%}"
    "{{ m['content'].split('</think>')[-1] }}"
    "{%- else -%}{{ m['content'] }}{%- endif -%}"
    "<|im_end|>{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\\n' }}{%- endif -%}"
)


@pytest.fixture
def tok():
    return char_tokenizer()


def user(text):
    return {"role": "user", "content": text}


def tool_result(call_id, text):
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def call_text(name, args_json):
    return f'<tool_call>{{"name": "{name}", "arguments": {args_json}}}</tool_call>'


def trained(sample):
    return [t for t, m in zip(sample.input_ids, sample.loss_mask, strict=True) if m]


def with_template(tok, template):
    tok = copy.deepcopy(tok)
    tok.chat_template = template
    return tok


def render(tok, messages, tools=None, *, gen):
    """Reference rendering straight through the tokenizer (arguments as dicts)."""
    msgs = []
    for m in messages:
        m = m.to_dict() if hasattr(m, "to_dict") else dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [
                {
                    **c,
                    "function": {
                        **c["function"],
                        "arguments": json.loads(c["function"]["arguments"]),
                    },
                }
                for c in m["tool_calls"]
            ]
        msgs.append(m)
    return tok.apply_chat_template(msgs, tools=tools, add_generation_prompt=gen, tokenize=False)


def encode(tok, text):
    return tok.encode(text, add_special_tokens=False)


# ---- OpenAI types and arguments ----------------------------------------------------------


async def test_completion_is_the_official_openai_type_and_round_trips(tok):
    engine = ScriptedEngine(replies=[tok.encode("42")], logprob=-0.5, version=7)
    resp = await ChatClient(engine, tok).episode().chat.completions.create(messages=[user("6*7")])

    assert type(resp) is ChatCompletion and resp.object == "chat.completion"
    assert isinstance(resp.choices[0].message, ChatCompletionMessage)
    assert resp.choices[0].message.content == "42" and resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].logprobs is None and resp.choices[0].message.tool_calls is None
    assert resp.usage == CompletionUsage(
        prompt_tokens=len(engine.requests[0].input_ids),
        completion_tokens=3,
        total_tokens=len(engine.requests[0].input_ids) + 3,
    )
    dumped = resp.model_dump()
    assert ChatCompletion.model_validate(dumped).model_dump() == dumped
    again = ChatCompletion.model_validate_json(resp.model_dump_json())
    assert again.choices == resp.choices and again.usage == resp.usage
    gen = generation_of(resp)
    assert gen.output_ids == [*tok.encode("42"), tok.eos_token_id]
    assert gen.output_versions == [7, 7, 7] and gen.output_logprobs == [-0.5] * 3
    assert gen.input_ids == engine.requests[0].input_ids
    with pytest.raises(ValueError, match="GenerationResult"):
        generation_of(ChatCompletion.model_validate(dumped))


async def test_tool_call_completion_uses_the_sdk_tool_call_type(tok):
    engine = ScriptedEngine(replies=[tok.encode(call_text("search", '{"q": "x"}'))])
    resp = (
        await ChatClient(engine, tok)
        .episode()
        .chat.completions.create(messages=[user("find x")], tools=TOOLS)
    )
    (call,) = resp.choices[0].message.tool_calls
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    assert (call.type, call.function.name, call.function.arguments) == (
        "function",
        "search",
        '{"q": "x"}',
    )
    assert resp.choices[0].finish_reason == "tool_calls" and resp.choices[0].message.content is None
    dumped = resp.model_dump()
    assert ChatCompletion.model_validate(dumped).model_dump() == dumped


async def test_not_given_and_omit_sentinels_and_none_mean_absent(tok):
    engine = ScriptedEngine(replies=[tok.encode("1")])
    client = ChatClient(engine, tok, sampling=SamplingConfig(max_new_tokens=9, temperature=0.7))
    resp = await client.episode().chat.completions.create(
        messages=[user("x")],
        model="gpt-4o",
        tools=openai.NOT_GIVEN,
        tool_choice=openai.omit,
        temperature=openai.NOT_GIVEN,
        top_p=openai.omit,
        max_tokens=None,
        n=openai.NOT_GIVEN,
        stream=openai.omit,
        seed=openai.NOT_GIVEN,
        top_logprobs=None,
        extra_headers={"User-Agent": "Agents/Python"},
        extra_body=None,
    )
    s = engine.requests[0].sampling
    assert (s.max_new_tokens, s.temperature, s.top_p, s.stop) == (9, 0.7, 1.0, ())
    assert resp.model == client.model_name


async def test_call_arguments_override_default_sampling(tok):
    engine = ScriptedEngine(replies=[tok.encode("1")])
    client = ChatClient(engine, tok)
    await client.episode().chat.completions.create(
        messages=[user("x")], max_tokens=3, temperature=0.0, top_p=0.5, stop="\n"
    )
    await client.episode().chat.completions.create(
        messages=[user("x")], max_completion_tokens=4, stop=["a", "b"], n=1, stream=False
    )
    s0, s1 = (r.sampling for r in engine.requests)
    assert (s0.max_new_tokens, s0.temperature, s0.top_p, s0.stop) == (3, 0.0, 0.5, ("\n",))
    assert (s1.max_new_tokens, s1.stop) == (4, ("a", "b"))
    assert s0.stop_token_ids == (tok.eos_token_id,)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"n": 2}, ValueError, "n"),
        ({"stream": True}, ValueError, "stream"),
        ({"top_logprobs": 3, "logprobs": True}, ValueError, "top_logprobs"),
        ({"tool_choice": "required"}, ValueError, "tool_choice"),
        (
            {"tool_choice": {"type": "function", "function": {"name": "search"}}},
            ValueError,
            "tool_choice",
        ),
        ({"parallel_tool_calls": False}, ValueError, "parallel_tool_calls"),
        ({"response_format": {"type": "json_object"}}, ValueError, "response_format"),
        ({"extra_body": {"top_k": 5}}, ValueError, "extra_body"),
        ({"max_tokens": 0}, ValueError, "max_tokens"),
        ({"max_tokens": 4, "max_completion_tokens": 5}, ValueError, "max_completion_tokens"),
        ({"temperature": -1.0}, ValueError, "temperature"),
        ({"top_p": 0.0}, ValueError, "top_p"),
        ({"stop": [""]}, ValueError, "stop"),
        ({"seed": 1}, TypeError, "seed"),
        ({"frobnicate": True}, TypeError, "frobnicate"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, ValueError, "tools"),
    ],
)
async def test_unhonourable_arguments_are_refused_by_name(tok, kwargs, error, name):
    engine = ScriptedEngine(replies=[[5]])
    ep = ChatClient(engine, tok).episode()
    with pytest.raises(error, match=rf"\b{name}\b"):
        await ep.chat.completions.create(messages=[user("x")], **kwargs)
    assert engine.requests == [] and ep.trajectory.samples == []


async def test_empty_messages_is_an_error(tok):
    client = ChatClient(ScriptedEngine(replies=[[5]]), tok)
    with pytest.raises(ValueError, match="messages"):
        await client.episode().chat.completions.create(messages=[])


@pytest.mark.parametrize(
    ("key", "value"),
    [("max_new_tokens", 0), ("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.5), ("top_k", -1)],
)
def test_sampling_config_names_the_dotted_key(key, value):
    with pytest.raises(ValueError, match=rf"inference\.sampling\.{key}\b"):
        SamplingConfig(**{key: value})


async def test_logprobs_are_filled_from_the_engine_when_asked(tok):
    engine = ScriptedEngine(replies=[tok.encode("ab")], logprob=-0.25)
    resp = (
        await ChatClient(engine, tok)
        .episode()
        .chat.completions.create(messages=[user("x")], logprobs=True, top_logprobs=0)
    )
    content = resp.choices[0].logprobs.content
    assert [c.token for c in content] == ["a", "b"]  # the stop token is not content
    assert [c.logprob for c in content] == [-0.25, -0.25]
    assert content[0].bytes == [ord("a")] and content[0].top_logprobs == []


# ---- tool calls ------------------------------------------------------------------------


async def test_tool_call_arguments_are_kept_byte_for_byte(tok):
    raw = '{"b": 1,  "a":[1,2], "s": "x\\u00e9"}'
    engine = ScriptedEngine(replies=[tok.encode("ok " + call_text("search", raw))])
    resp = (
        await ChatClient(engine, tok)
        .episode()
        .chat.completions.create(messages=[user("x")], tools=TOOLS)
    )
    msg = resp.choices[0].message
    assert msg.tool_calls[0].function.arguments == raw
    assert msg.content == "ok "  # as written: the template puts it right before the call


async def test_malformed_tool_calls_stay_in_content_and_are_counted(tok):
    bad = "<tool_call>{not json}</tool_call>"
    engine = ScriptedEngine(replies=[tok.encode(bad)])
    ep = ChatClient(engine, tok).episode()
    resp = await ep.chat.completions.create(messages=[user("x")], tools=TOOLS)
    msg = resp.choices[0].message
    assert msg.tool_calls is None and msg.content == bad
    assert resp.choices[0].finish_reason == "stop"
    assert "not valid JSON" in resp.parse_errors[0]
    assert ep.trajectory.metrics["tool_call_parse_errors"] == 1


async def test_tool_calls_are_parsed_only_when_tools_may_be_called(tok):
    text = call_text("search", '{"q": "x"}')
    engine = ScriptedEngine(replies=[tok.encode(text)])
    client = ChatClient(engine, tok)
    no_tools = await client.episode().chat.completions.create(messages=[user("x")])
    choice_none = await client.episode().chat.completions.create(
        messages=[user("x")], tools=TOOLS, tool_choice="none"
    )
    for resp in (no_tools, choice_none):
        assert resp.choices[0].message.content == text
        assert resp.choices[0].message.tool_calls is None
    assert "Tools:" in tok.decode(engine.requests[1].input_ids)  # still shown to the model


# ---- token faithfulness ------------------------------------------------------------------


async def test_three_turn_tool_episode_is_prompt_plus_sampled_ids_plus_new_message_tokens(tok):
    tok = with_template(tok, TOJSON_TEMPLATE)
    replies = [
        call_text("search", '{"q": "capital of France"}'),
        "I will check. " + call_text("search", '{"q": "Paris population"}'),
        "About 2.1 million.",
    ]
    engine = ScriptedEngine(replies=[tok.encode(r) for r in replies], logprob=-0.5)
    ep = ChatClient(engine, tok).episode()
    history = [user("How many live in the capital of France?")]
    outputs, expected = [], encode(tok, render(tok, history, TOOLS, gen=True))
    for turn in range(3):
        engine.set_version(10 + turn)
        resp = await ep.chat.completions.create(messages=history, tools=TOOLS)
        out = generation_of(resp).output_ids
        assert engine.requests[turn].input_ids == tuple(expected)  # what the engine saw
        outputs.append(out)
        expected += out
        before = render(tok, [*history, resp.choices[0].message.to_dict()], TOOLS, gen=False)
        if resp.choices[0].message.tool_calls:
            call_id = resp.choices[0].message.tool_calls[0].id
            history = [*history, resp.choices[0].message.to_dict(), tool_result(call_id, "r")]
            after = render(tok, history, TOOLS, gen=True)
            assert after.startswith(before)
            # The model sampled <|im_end|>; the template's "\n" after it was not sampled.
            expected += encode(tok, "\n" + after[len(before) :])

    (sample,) = ep.trajectory.samples
    assert sample.input_ids == expected
    assert trained(sample) == [t for out in outputs for t in out]
    versions = [v for v, m in zip(sample.versions, sample.loss_mask, strict=True) if m]
    assert versions == [10 + i for i, out in enumerate(outputs) for _ in out]
    assert {lp for lp, m in zip(sample.logprobs, sample.loss_mask, strict=True) if m} == {-0.5}
    assert sample.num_turns == 3 and ep.trajectory.num_turns == 3
    assert ep.trajectory.metrics == dict.fromkeys(EPISODE_METRICS, 0.0)
    assert ep.trajectory.messages[-1]["content"] == "About 2.1 million."


async def test_sdk_message_objects_in_history_give_the_same_tokens_as_dicts(tok):
    async def episode(as_object):
        engine = ScriptedEngine(
            replies=[tok.encode(call_text("search", '{"q": "x"}')), tok.encode("done")]
        )
        ep = ChatClient(engine, with_template(tok, TOJSON_TEMPLATE)).episode()
        history = [user("x")]
        resp = await ep.chat.completions.create(messages=history, tools=TOOLS)
        message = resp.choices[0].message
        call_id = message.tool_calls[0].id
        history += [message if as_object else message.to_dict(), tool_result(call_id, "r")]
        await ep.chat.completions.create(messages=history, tools=TOOLS)
        return ep.trajectory, engine

    as_dicts, _ = await episode(False)
    as_objects, engine = await episode(True)
    assert len(as_objects.samples) == 1 and as_objects.metrics["history_splits"] == 0
    assert as_objects.samples[0].input_ids[: len(engine.requests[0].input_ids)] == list(
        engine.requests[0].input_ids
    )
    # Call ids differ between runs (and so the tokens of the tool message): compare shapes.
    assert len(as_objects.samples[0]) == len(as_dicts.samples[0])
    assert as_objects.samples[0].loss_mask == as_dicts.samples[0].loss_mask


async def test_drift_is_counted_when_the_template_rerenders_a_turn_but_still_extends(tok, caplog):
    tok = with_template(tok, TOJSON_TEMPLATE)
    raw = '{"q":  "x"}'  # tojson re-renders it as {"q": "x"}
    first = tok.encode(call_text("search", raw))
    engine = ScriptedEngine(replies=[first, tok.encode("done")])
    ep = ChatClient(engine, tok).episode()
    history = [user("x")]
    resp = await ep.chat.completions.create(messages=history, tools=TOOLS)
    message = resp.choices[0].message
    before = render(tok, [*history, message], TOOLS, gen=False)
    history += [message, tool_result(message.tool_calls[0].id, "r")]
    # The turn is checked when the next call extends it.
    with caplog.at_level(logging.WARNING, logger="areal_env.inference.chat_client"):
        await ep.chat.completions.create(messages=history, tools=TOOLS)
    assert ep.trajectory.metrics["drift_events"] == 1
    assert "drift" in caplog.text and "char" in caplog.text

    (sample,) = ep.trajectory.samples
    # The new message's tokens are the difference of two renderings, appended after
    # the sampled ids: a single fresh rendering would be one character off here.
    new_tokens = encode(tok, "\n" + render(tok, history, TOOLS, gen=True)[len(before) :])
    sampled = [*first, tok.eos_token_id]
    assert engine.requests[1].input_ids == (*engine.requests[0].input_ids, *sampled, *new_tokens)
    assert trained(sample) == [*sampled, *tok.encode("done"), tok.eos_token_id]
    # The sampled spacing stays in the sequence; the fresh rendering has tojson's.
    text = tok.decode(sample.input_ids)
    assert raw in text and '{"q": "x"}' in render(tok, history, TOOLS, gen=True)
    assert ep.trajectory.metrics["template_splits"] == 0
    assert message.tool_calls[0].function.arguments == raw


async def test_length_cut_reply_gets_the_whole_turn_close_before_new_messages(tok):
    engine = ScriptedEngine(replies=[tok.encode("abcdef"), tok.encode("z")])
    ep = ChatClient(engine, tok).episode()
    history = [user("x")]
    resp = await ep.chat.completions.create(messages=history, max_tokens=3)
    assert resp.choices[0].finish_reason == "length" and resp.choices[0].message.content == "abc"
    history += [resp.choices[0].message, user("y")]
    await ep.chat.completions.create(messages=history)
    (sample,) = ep.trajectory.samples
    assert tok.decode(sample.input_ids) == render(tok, history, gen=True) + "z<|im_end|>"
    assert ep.trajectory.metrics["drift_events"] == 0


async def test_template_that_strips_earlier_thinking_splits_into_a_second_sample(tok):
    tok = with_template(tok, THINK_STRIPPING_TEMPLATE)
    r1, r2 = tok.encode("<think>hmm</think>42"), tok.encode("7")
    engine = ScriptedEngine(replies=[r1, r2])
    ep = ChatClient(engine, tok).episode()
    history = [user("q")]
    resp = await ep.chat.completions.create(messages=history)
    history += [resp.choices[0].message.to_dict(), user("more")]
    history_before = copy.deepcopy(history)
    await ep.chat.completions.create(messages=history)

    first, second = ep.trajectory.samples
    assert ep.trajectory.metrics["template_splits"] == 1
    assert trained(first) == [*r1, tok.eos_token_id]
    prompt = encode(tok, render(tok, history, gen=True))
    assert "hmm" not in tok.decode(prompt)
    assert engine.requests[1].input_ids == tuple(prompt)
    assert second.input_ids == [*prompt, *r2, tok.eos_token_id]
    assert trained(second) == [*r2, tok.eos_token_id]
    assert history == history_before


async def test_a_different_temperature_starts_a_sample_with_its_own_sampling(tok):
    engine = ScriptedEngine(replies=[tok.encode("1"), tok.encode("2"), tok.encode("3")])
    ep = ChatClient(engine, tok).episode()
    history = [user("a")]
    resp = await ep.chat.completions.create(messages=history)
    history += [resp.choices[0].message, user("b")]
    resp = await ep.chat.completions.create(messages=history, temperature=0.5)
    history += [resp.choices[0].message, user("c")]
    await ep.chat.completions.create(messages=history, temperature=0.5)

    first, second = ep.trajectory.samples
    assert first.sampling.temperature == 1.0 and second.sampling.temperature == 0.5
    assert (first.num_turns, second.num_turns) == (1, 2)
    assert ep.trajectory.metrics["sampling_splits"] == 1
    assert engine.requests[1].input_ids == tuple(encode(tok, render(tok, history[:3], gen=True)))


async def test_messages_that_extend_no_earlier_history_start_a_new_sample(tok):
    engine = ScriptedEngine(replies=[tok.encode("1"), tok.encode("2")])
    ep = ChatClient(engine, tok).episode()
    await ep.chat.completions.create(messages=[user("a")])
    await ep.chat.completions.create(messages=[user("something else")])
    assert len(ep.trajectory.samples) == 2 and ep.trajectory.metrics["history_splits"] == 1


async def test_concurrent_calls_never_share_a_sample(tok):
    engine = ScriptedEngine(replies=[tok.encode("1"), tok.encode("2"), tok.encode("3")])
    ep = ChatClient(engine, tok).episode()
    resp = await ep.chat.completions.create(messages=[user("a")])
    history = [user("a"), resp.choices[0].message]
    await engine.pause()
    try:
        tasks = [
            asyncio.create_task(ep.chat.completions.create(messages=[*history, user(q)]))
            for q in ("b", "c")
        ]
        await asyncio.sleep(0)
        assert not any(t.done() for t in tasks)
    finally:
        await engine.resume()
    await asyncio.gather(*tasks)
    first, second = ep.trajectory.samples
    assert first.num_turns == 2 and second.num_turns == 1
    assert ep.trajectory.metrics["history_splits"] == 1
    assert trained(second) == [*tok.encode("3"), tok.eos_token_id]
    assert second.input_ids[:-2] == encode(tok, render(tok, [*history, user("c")], gen=True))


async def test_untracked_client_records_nothing(tok):
    engine = ScriptedEngine(replies=[tok.encode("1"), tok.encode("judge"), tok.encode("2")])
    client = ChatClient(engine, tok)
    ep, judge = client.episode(), client.untracked()
    history = [user("a")]
    resp = await ep.chat.completions.create(messages=history)
    verdict = await judge.chat.completions.create(messages=[user("grade this")])
    history += [resp.choices[0].message, user("b")]
    await ep.chat.completions.create(messages=history)

    assert isinstance(verdict, ChatCompletion) and verdict.choices[0].message.content == "judge"
    assert engine.requests[1].input_ids == tuple(
        encode(tok, render(tok, [user("grade this")], gen=True))
    )
    (sample,) = ep.trajectory.samples
    assert trained(sample) == [
        *tok.encode("1"),
        tok.eos_token_id,
        *tok.encode("2"),
        tok.eos_token_id,
    ]
    assert not hasattr(judge, "trajectory")


def test_scripted_engine_satisfies_the_engine_protocol():
    from areal_env.inference.engine import InferenceEngine

    assert isinstance(ScriptedEngine(replies=[[1]]), InferenceEngine)


def test_fast_decode_equals_the_tokenizers_decode(tok):
    client = ChatClient(ScriptedEngine(replies=[[5]]), tok)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "héllo  <b>\n 12+3"}, {"role": "assistant", "content": "15"}],
        tokenize=False,
    )
    ids = list(tok(text, add_special_tokens=False)["input_ids"])
    assert tok.eos_token_id in ids  # special tokens are in the mix
    for skip in (True, False):
        assert client.decode(ids, skip_special_tokens=skip) == tok.decode(
            ids, skip_special_tokens=skip
        )
