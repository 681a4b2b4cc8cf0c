"""Chat SFT: the loss mask, data errors, a tiny run, and the warm start's shared step.

Mutations tried (each made a test here fail):

* ``tokenize_chat`` training the whole rendered turn (``end = len(through)``) ->
  the Qwen2.5 mask test sees ``<|im_end|>\\n`` instead of ``<|im_end|>``;
* ``tokenize_chat`` starting a turn at the end of the previous message instead of
  after the generation prompt -> the mask tests see the assistant header trained;
* the prefix check removed -> the reasoning-stripping template no longer raises;
* ``sft_step`` training ``range(len(batch))`` rows (the warm start's old count) ->
  the two-sample demonstration trains one row;
* the warm start back to its own ``train_step`` call -> the shared-step test fails;
* ``sft_step`` with ``nll_loss`` negated -> the run test's loss rises.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from areal_env.data.chat_sft import load_chat_sft, tokenize_chat
from areal_env.metrics import read_metrics
from areal_env.models.tiny import load_model_and_tokenizer
from areal_env.testing import TINY_MODEL_OVERRIDES, char_tokenizer, make_sample
from areal_env.trainers import sft as sft_module
from areal_env.trainers import warm_start as warm_start_module
from areal_env.trainers.backends.base import TrainConfig
from areal_env.trainers.backends.torch_single import TorchBackend
from areal_env.trainers.config import WarmStartConfig
from areal_env.types import Trajectory

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "sft" / "chats_tiny.jsonl"

# Qwen2.5-Instruct's chat template, as published with the model: a default system
# prompt, tools as JSON in the system block, Hermes tool calls, and consecutive
# tool results merged into one user turn.
QWEN25_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}"
    "{%- endif %}"
    '{{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.'
    "\\n\\nYou are provided with function signatures within <tools></tools> XML tags:"
    '\\n<tools>" }}'
    '{%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}'
    '{{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and '
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    '{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call>'
    '<|im_end|>\\n" }}'
    "{%- else %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. "
    "You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
    "{%- for message in messages %}"
    '{%- if (message.role == "user") or (message.role == "system" and not loop.first) '
    'or (message.role == "assistant" and not message.tool_calls) %}'
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    '{%- elif message.role == "assistant" %}'
    "{{- '<|im_start|>' + message.role }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    '{{- \'\\n<tool_call>\\n{"name": "\' }}{{- tool_call.name }}'
    "{{- '\", \"arguments\": ' }}{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    '{%- elif message.role == "tool" %}'
    '{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}'
    "{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}"
    '{%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}'
    "{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Renders an earlier assistant turn without its reasoning, as Qwen3's template does.
STRIPS_THINKING_TEMPLATE = (
    "{%- for m in messages -%}"
    "<|im_start|>{{ m['role'] }}{{ '\\n' }}"
    "{%- if m['role'] == 'assistant' and not loop.last -%}"
    "{{ (m['content'] or '').split('</think>')[-1] }}"
    "{%- else -%}{{ m['content'] or '' }}{%- endif -%}"
    "<|im_end|>{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\\n' }}{%- endif -%}"
)

ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {"type": "object", "properties": {"a": {}, "b": {}}},
    },
}


def add_call(call_id: str, a: int, b: int) -> dict:
    args = json.dumps({"a": a, "b": b})
    return {"id": call_id, "type": "function", "function": {"name": "add", "arguments": args}}


def with_template(template: str):
    tok = copy.deepcopy(char_tokenizer())
    tok.chat_template = template
    return tok


def trained_spans(tok, sample) -> list[str]:
    """The decoded runs of consecutive loss-mask-1 tokens."""
    spans, run = [], []
    for t, m in zip(sample.input_ids, sample.loss_mask, strict=True):
        if m:
            run.append(t)
        elif run:
            spans.append(tok.decode(run))
            run = []
    if run:
        spans.append(tok.decode(run))
    return spans


def write_jsonl(path: Path, records: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


# ---- the loss mask ----------------------------------------------------------------------


def test_qwen25_mask_is_exactly_every_assistant_turn_plus_its_end_token():
    tok = with_template(QWEN25_TEMPLATE)
    chat = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "What is 2+3 and 4+5?"},
        {"role": "assistant", "content": None, "tool_calls": [add_call("c1", 2, 3)]},
        {"role": "tool", "tool_call_id": "c1", "content": "TOOL-FIVE"},
        {"role": "assistant", "content": "Next.", "tool_calls": [add_call("c2", 4, 5)]},
        {"role": "tool", "tool_call_id": "c2", "content": "TOOL-NINE"},
        {"role": "tool", "tool_call_id": "c3", "content": "TOOL-EXTRA"},
        {"role": "assistant", "content": "5 and 9."},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "Welcome."},
    ]
    sample = tokenize_chat(tok, chat, [ADD_TOOL])

    call = '<tool_call>\n{{"name": "add", "arguments": {{"a": {}, "b": {}}}}}\n</tool_call>'
    assert trained_spans(tok, sample) == [
        call.format(2, 3) + "<|im_end|>",
        "Next.\n" + call.format(4, 5) + "<|im_end|>",
        "5 and 9.<|im_end|>",
        "Welcome.<|im_end|>",
    ]
    # The row is the template's own rendering of the whole chat, nothing re-tokenized.
    text = tok.apply_chat_template(
        [args_as_dicts(m) for m in chat], tools=[ADD_TOOL], tokenize=False
    )
    assert sample.input_ids == tok.encode(text, add_special_tokens=False)
    pairs = zip(sample.input_ids, sample.loss_mask, strict=True)
    untrained = tok.decode([t for t, m in pairs if not m])
    for visible in ("Be terse.", "TOOL-FIVE", "TOOL-NINE", "TOOL-EXTRA", "Thanks", "# Tools"):
        assert visible in untrained
    assert len(sample.logprobs) == len(sample.versions) == len(sample)


def args_as_dicts(message: dict) -> dict:
    """A message with its tool-call arguments as dicts, as templates are handed them."""
    if not message.get("tool_calls"):
        return message
    calls = [
        {**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}}
        for c in message["tool_calls"]
    ]
    return {**message, "tool_calls": calls}


def test_embedded_template_mask_with_tools():
    tok = char_tokenizer()
    chat = [
        {"role": "user", "content": "1+2?"},
        {"role": "assistant", "content": None, "tool_calls": [add_call("c1", 1, 2)]},
        {"role": "tool", "tool_call_id": "c1", "content": "3"},
        {"role": "assistant", "content": "3"},
    ]
    sample = tokenize_chat(tok, chat, [ADD_TOOL])
    assert trained_spans(tok, sample) == [
        '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call><|im_end|>',
        "3<|im_end|>",
    ]


def test_template_that_rewrites_earlier_turns_is_an_error_naming_the_line(tmp_path):
    tok = with_template(STRIPS_THINKING_TEMPLATE)
    rewritten = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "<think>hmm</think>a"},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "b"},
        ]
    }
    path = write_jsonl(tmp_path / "chats.jsonl", [GOOD, rewritten])
    with pytest.raises(ValueError, match=r"chats\.jsonl:2: .*messages\[1\].*prefix"):
        load_chat_sft(path, tok, max_length=512)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("{not json", "not valid JSON"),
        ({"conversation": []}, "'messages' list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "unknown role 'robot'"),
        ({"messages": [{"role": "user", "content": "x"}]}, "no assistant turn"),
        ({"messages": [{"role": "assistant", "content": 3}]}, "content must be a string"),
        ({"messages": GOOD["messages"], "tools": "add"}, "'tools' must be a list"),
    ],
)
def test_malformed_lines_are_errors_naming_the_line(tmp_path, line, error):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, "", line])
    with pytest.raises(ValueError, match=rf"bad\.jsonl:3: .*{error}"):
        load_chat_sft(path, char_tokenizer(), max_length=512)


def test_long_conversations_are_dropped_or_truncated_and_counted(tmp_path, caplog):
    long = {
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "a" * 40},
        ]
    }
    path = write_jsonl(tmp_path / "c.jsonl", [GOOD, long])
    tok = char_tokenizer()
    short = len(tokenize_chat(tok, GOOD["messages"]))

    rows, stats = load_chat_sft(path, tok, max_length=30, truncation="drop")
    assert short <= 30 and len(rows) == 1 and (stats.read, stats.kept, stats.dropped) == (2, 1, 1)
    assert "c.jsonl:2: dropped" in caplog.text

    rows, stats = load_chat_sft(path, tok, max_length=30, truncation="truncate")
    assert [len(r) for r in rows] == [short, 30] and stats.truncated == 1 and stats.dropped == 0
    assert stats.trained_tokens == sum(r.num_generated for r in rows)

    with pytest.raises(ValueError, match="no conversation to train on"):
        load_chat_sft(path, tok, max_length=5, truncation="truncate")


def test_every_example_is_seen_once_per_epoch_in_a_reproducible_order():
    cfg = sft_module.SFTConfig(batch_size=3, epochs=2, seed=4)
    n = 7
    assert sft_module.total_steps(cfg, n) == 6
    epochs: dict[int, list[int]] = {}
    for step in range(6):
        picked, epoch = sft_module.step_examples(cfg, step, n)
        epochs.setdefault(epoch, []).extend(picked)
    assert sorted(epochs) == [0, 1] and all(sorted(v) == list(range(n)) for v in epochs.values())
    assert epochs[0] != epochs[1]  # reshuffled, and the same on a rerun or resume:
    assert sft_module.step_examples(cfg, 4, n) == sft_module.step_examples(cfg, 4, n)


# ---- the shared step and the warm start ---------------------------------------------------


def small_backend(model_and_tok):
    model, tok = model_and_tok
    model = copy.deepcopy(model)
    config = TrainConfig(lr=1e-3, warmup_steps=1, ppo_minibatches=1, micro_batch_size=8)
    return TorchBackend(model, config, pad_id=tok.pad_token_id), model, tok


def test_sft_step_trains_every_sample_of_every_example(tiny_model_and_tokenizer):
    backend, _, tok = small_backend(tiny_model_and_tokenizer)
    two_rows = Trajectory(samples=[make_sample([5, 6], [7, 8]), make_sample([5], [9])])
    stats = sft_module.sft_step(backend, [two_rows, make_sample([5, 6], [10])])
    assert stats["train/rows"] == 3.0 and stats["sft/nll"] > 0


async def test_warm_start_trains_through_the_shared_sft_step(tiny_model_and_tokenizer, monkeypatch):
    assert warm_start_module.sft_step is sft_module.sft_step
    model, tok = tiny_model_and_tokenizer
    model = copy.deepcopy(model)
    before = copy.deepcopy(model.state_dict())
    pool = [Trajectory(samples=[make_sample([5, 6], [7 + i])], reward=1.0) for i in range(3)]

    async def demos(*args, **kwargs):
        return pool, SimpleNamespace(dropped=0)

    async def no_push(*args, **kwargs):
        return None

    async def accuracy(*args, **kwargs):
        return 0.0

    calls = []

    def spy(backend, examples):
        calls.append(list(examples))
        return sft_module.sft_step(backend, examples)

    monkeypatch.setattr(warm_start_module, "build_demonstrations", demos)
    monkeypatch.setattr(warm_start_module, "push_weights", no_push)
    monkeypatch.setattr(warm_start_module, "sampled_accuracy", accuracy)
    monkeypatch.setattr(warm_start_module, "sft_step", spy)
    cfg = WarmStartConfig(batch_size=2, max_steps=2, eval_every=1, eval_episodes=1, num_demos=3)
    result = await warm_start_module.warm_start(
        cfg,
        model,
        engine=SimpleNamespace(version=0),
        client=SimpleNamespace(tokenizer=tok),
        env_factory=None,
        agent=None,
        episode_fn=None,
        seed=0,
        progress=False,
    )
    assert result.steps == 2 and not result.reached_target
    assert len(calls) == 2 and all(len(c) == 2 and all(d in pool for d in c) for c in calls)
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ---- a whole run --------------------------------------------------------------------------


def test_sft_run_lowers_the_loss_and_writes_a_loadable_model(tmp_path):
    out = tmp_path / "run"
    rc = sft_module.main(
        [
            "--config",
            str(REPO / "examples" / "sft" / "tiny.yaml"),
            *TINY_MODEL_OVERRIDES,
            f"output_dir={out}",
            f"data.train_path={EXAMPLE}",
            f"data.eval_path={EXAMPLE}",
            "epochs=8",
            "train.lr=1e-2",  # the smaller model of TINY_MODEL_OVERRIDES needs a larger step
            "eval_every=0",
            "metrics.progress=false",
            "metrics.tensorboard=false",
            "metrics.plot=false",
        ]
    )
    assert rc == 0
    rows = read_metrics(out / "metrics.jsonl")
    nll = [r["sft/nll"] for r in rows if "sft/nll" in r]
    assert len(nll) == 8 * 2  # 8 chats, batch_size 4: two steps an epoch
    assert sum(nll[-3:]) / 3 < 0.6 * sum(nll[:3]) / 3
    evals = [r["eval/nll"] for r in rows if "eval/nll" in r]
    assert len(evals) == 2 and evals[-1] < 0.6 * evals[0]
    assert rows[0]["data/train/kept"] == 8.0 and rows[0]["data/train/dropped"] == 0.0

    model, tok = load_model_and_tokenizer(out / "final_model")
    chats, _ = load_chat_sft(EXAMPLE, tok, max_length=512)
    again = sft_module.eval_nll(model, chats, pad_id=tok.pad_token_id, micro_batch_size=8)
    assert again == pytest.approx(evals[-1], rel=1e-4)  # the saved model is the trained one


def test_missing_train_path_is_a_config_error(capsys):
    assert sft_module.main(["metrics.wandb_mode=disabled"]) == 2
    assert "data.train_path is required" in capsys.readouterr().err


def test_a_resumed_run_repeats_the_uninterrupted_one(tmp_path):
    def run(out: Path, *extra: str) -> list[float]:
        common = [*TINY_MODEL_OVERRIDES, f"data.train_path={EXAMPLE}", "batch_size=4"]
        quiet = ["metrics.wandb_mode=disabled", "metrics.progress=false", "metrics.plot=false"]
        argv = [*common, *quiet, "metrics.tensorboard=false", f"output_dir={out}", *extra]
        assert sft_module.main(argv) == 0
        return [r["sft/nll"] for r in read_metrics(out / "metrics.jsonl") if "sft/nll" in r]

    run(tmp_path / "a", "epochs=1", "checkpoint.every_steps=1")
    resumed = run(tmp_path / "a", "epochs=2", "--resume")
    assert resumed == run(tmp_path / "b", "epochs=2")  # same order, weights, optimizer


def test_docs_list_every_sft_key_and_every_key_has_a_docstring():
    from areal_env.config_reference import config_rows

    rows = config_rows(sft_module.SFTConfig)
    assert not [key for key, _, _, doc in rows if not doc]
    shared = ("model.", "train.", "checkpoint.", "metrics.")
    page = (REPO / "docs" / "sft.md").read_text()
    missing = [k for k, *_ in rows if not k.startswith(shared) and f"`{k}`" not in page]
    assert not missing, f"docs/sft.md does not list {missing}"
