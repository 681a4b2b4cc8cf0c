from __future__ import annotations

import json

import pytest

from areal_env.errors import ToolCallParseError
from areal_env.inference.tool_parsing import (
    parse_tool_call_body,
    parse_tool_calls,
    tool_call_to_openai,
)


@pytest.mark.parametrize(
    "raw",
    [
        '{"x": 1}',
        '{"b": 1,  "a":[1,2]}',
        '{\n  "query": "caf\\u00e9 \\"quoted\\"",\n  "n": 1e3\n}',
        '{"nested": {"k": [true, null, {"z": -0.0}]}, "a": "}"}',
        "{}",
    ],
)
def test_object_arguments_are_the_raw_text_the_model_wrote(raw):
    text = f'<tool_call>{{"name": "f", "arguments": {raw}}}</tool_call>'
    (call,) = parse_tool_calls(text).tool_calls
    assert call.arguments == raw
    assert call.name == "f"


def test_arguments_written_as_a_json_string_are_that_string_decoded():
    body = json.dumps({"name": "f", "arguments": '{"a":  1}'})
    assert parse_tool_call_body(body).arguments == '{"a":  1}'


def test_missing_arguments_read_as_an_empty_object_and_key_order_does_not_matter():
    assert parse_tool_call_body('{"name": "f"}').arguments == "{}"
    assert parse_tool_call_body('{"arguments": {"a": 1}, "name": "f"}').arguments == '{"a": 1}'


def test_qwen_style_blocks_with_newlines_and_text_around_them():
    text = (
        "Let me look.\n<tool_call>\n"
        '{"name": "search", "arguments": {"q": "a"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "calc", "arguments": {"e": "1+1"}}\n</tool_call>'
    )
    parsed = parse_tool_calls(text)
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [
        ("search", '{"q": "a"}'),
        ("calc", '{"e": "1+1"}'),
    ]
    assert parsed.content == "Let me look.\n\n" and parsed.errors == []
    assert len({c.id for c in parsed.tool_calls}) == 2


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        ("{not json}", "not valid JSON"),
        ('{"name": "f", "arguments": {"a": 1}', "not valid JSON"),
        ('{"name": "f", "arguments": {"a": 1}} trailing', "text after the object"),
        ('{"name": "f" "arguments": {}}', "expected ','"),
        ('["f", {}]', "expected an object"),
        ('{"arguments": {}}', "'name'"),
        ('{"name": 3, "arguments": {}}', "'name'"),
        ('{"name": "f", "arguments": [1, 2]}', "must be a JSON object"),
        ('{"name": "f", "arguments": "not json"}', "arguments are not valid JSON"),
        ('{"name": "f", "arguments": "[1]"}', "must be a JSON object"),
    ],
)
def test_malformed_blocks_are_errors_and_keep_their_text_in_content(block, reason):
    good = '<tool_call>{"name": "g", "arguments": {}}</tool_call>'
    text = f"a<tool_call>{block}</tool_call>b{good}"
    parsed = parse_tool_calls(text)
    assert [c.name for c in parsed.tool_calls] == ["g"]
    assert parsed.content == f"a<tool_call>{block}</tool_call>b"
    (error,) = parsed.errors
    assert reason in error
    with pytest.raises(ToolCallParseError):
        parse_tool_call_body(block)


def test_an_unclosed_block_is_an_error():
    parsed = parse_tool_calls('ok <tool_call>{"name": "f", "argu')
    assert parsed.tool_calls == [] and "unclosed" in parsed.errors[0]
    assert parsed.content == 'ok <tool_call>{"name": "f", "argu'


def test_plain_text_has_no_calls_and_no_errors():
    parsed = parse_tool_calls("just text")
    assert (parsed.content, parsed.tool_calls, parsed.errors) == ("just text", [], [])


def test_openai_tool_call_keeps_the_arguments_string():
    call = parse_tool_call_body('{"name": "f", "arguments": {"b":2,"a":1}}')
    sdk = tool_call_to_openai(call)
    assert (sdk.id, sdk.type, sdk.function.name) == (call.id, "function", "f")
    assert sdk.function.arguments == '{"b":2,"a":1}'
