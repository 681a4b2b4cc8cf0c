"""A deterministic small Qwen2 model and a character tokenizer, built offline.

The embedded default run cannot download anything, so it builds its model here,
saves it as an ordinary Hugging Face folder and loads it back through
``AutoModelForCausalLM`` / ``AutoTokenizer``: the same code path a user takes
with ``model.path=<hub id or folder>``.

The tokenizer maps every printable ASCII character and newline to one token and
adds the Qwen-style chat markers as special tokens, with a matching chat
template. ``vocab_size`` equals ``len(tokenizer)`` so an engine can never sample
an id the tokenizer cannot decode.
"""

from __future__ import annotations

import json
import string
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

PAD_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<|unk|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, IM_START, IM_END)
CHARS = tuple(dict.fromkeys(string.printable.replace("\t", "").replace("\r", "")))
# Role names are single tokens so the chat template costs 8 tokens per turn,
# not 19: sequence length is most of the cost of a tiny model's train step.
ROLE_TOKENS = ("system", "user", "assistant", "tool")

# Qwen-style template. Tools go into a system block; assistant tool calls are
# written as <tool_call>{json}</tool_call> (Hermes style, as Qwen models do), tool
# results as role "tool". Unlike Qwen's, the tool block lists each tool as
# name(arg, ...) rather than its whole JSON schema: ~25 tokens instead of ~400 for
# the search tool, and sequence length is most of what a tiny model's step costs.
# A model trained from scratch learns the tools from demonstrations, not schemas.
CHAT_TEMPLATE = (
    "{%- if tools -%}"
    "<|im_start|>system{{ '\\n' }}Tools:"
    "{%- for t in tools -%}"
    "{%- set f = t['function'] if t.get('function') else t -%}"
    "{{ ' ' }}{{ f['name'] }}("
    "{{- (f.get('parameters') or {}).get('properties', {}) | list | join(', ') -}}"
    ")"
    "{%- endfor -%}"
    "<|im_end|>{{ '\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "<|im_start|>{{ message['role'] }}{{ '\\n' }}"
    "{%- if message['content'] -%}{{ message['content'] }}{%- endif -%}"
    "{%- if message.get('tool_calls') -%}"
    "{%- for call in message['tool_calls'] -%}"
    '{%- set a = call["function"]["arguments"] -%}'
    '<tool_call>{"name": "{{ call["function"]["name"] }}", '
    '"arguments": {{ a if a is string else a | tojson }}}</tool_call>'
    "{%- endfor -%}"
    "{%- endif -%}"
    "<|im_end|>{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\\n' }}{%- endif -%}"
)


@dataclass(kw_only=True, slots=True)
class TinyModelConfig:
    """Shape of the embedded Qwen2 model (defaults: ~1.1M parameters)."""

    hidden_size: int = 128
    """Width of the residual stream."""
    num_layers: int = 4
    """Number of transformer blocks. Four, not two: on CPU the step is bound by Python
    overhead more than by FLOPs, so two more blocks cost little per GRPO step (0.36 s
    against 0.31-0.36 s) while RL learns about three times faster per step
    (BENCHMARKS.md, "A deeper default model")."""
    num_heads: int = 4
    """Attention heads (also key/value heads)."""
    intermediate_size: int = 512
    """MLP width."""
    max_position_embeddings: int = 512
    """Longest sequence the model accepts."""
    seed: int = 0
    """Seed of the weight initialisation, so the same config gives the same model."""


def build_tokenizer():  # -> PreTrainedTokenizerFast
    """Build the character-level tokenizer with chat markers and a chat template.

    Example:
        >>> tok = build_tokenizer()
        >>> tok.decode(tok("12+3=")["input_ids"])
        '12+3='
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARS + ROLE_TOKENS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    core.add_tokens([AddedToken(w, normalized=False) for w in ROLE_TOKENS])
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        eos_token=IM_END,
        additional_special_tokens=[IM_START],
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_model(path: str | Path, config: TinyModelConfig | None = None) -> Path:
    """Create (or reuse) the tiny model folder at ``path`` and return it.

    The folder is rebuilt when it is missing or was built from another config,
    so a stale cache can never stand in for the requested model.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = config or TinyModelConfig()
    path = Path(path)
    marker = path / "tiny_model_config.json"
    # The template is part of what is built: a folder made with another one is stale.
    wanted = json.dumps({**asdict(config), "chat_template": CHAT_TEMPLATE}, sort_keys=True)
    if marker.exists() and marker.read_text() == wanted:
        return path
    path.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    model_cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        use_sliding_window=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = Qwen2ForCausalLM(model_cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    _pin_tokenizer_class(path)
    marker.write_text(wanted)
    return path


def _pin_tokenizer_class(path: Path) -> None:
    # Without this, AutoTokenizer reads model_type=qwen2 from config.json and
    # returns a Qwen2Tokenizer that silently drops spaces.
    cfg_file = path / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_file.write_text(json.dumps(cfg, indent=2))


def _load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    cfg_file = Path(path) / "tokenizer_config.json"
    declared = (
        json.loads(cfg_file.read_text()).get("tokenizer_class") if cfg_file.exists() else None
    )
    # AutoTokenizer prefers the model type's tokenizer (Qwen2Tokenizer) over a
    # folder that declares the generic class, and that one drops spaces.
    if declared in ("PreTrainedTokenizerFast", "TokenizersBackend"):
        return PreTrainedTokenizerFast.from_pretrained(str(path))
    return AutoTokenizer.from_pretrained(str(path))


def load_chat_tokenizer(path: str | Path) -> Any:
    """The tokenizer of ``path``, with a pad token; it must have a chat template.

    Raises:
        ValueError: when the tokenizer has no chat template (the chat client needs one).
    """
    tok = _load_tokenizer(path)
    if tok.chat_template is None:
        raise ValueError(f"model.path: tokenizer at {path} has no chat template")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model_and_tokenizer(
    path: str | Path, *, dtype: str = "float32", device: str = "cpu"
):  # -> tuple[PreTrainedModel, PreTrainedTokenizerBase]
    """Load any causal LM folder or hub id through the Auto classes.

    Raises:
        ValueError: when the tokenizer has no chat template (the chat client needs one).
    """
    from transformers import AutoModelForCausalLM

    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"model.dtype: unknown torch dtype {dtype!r}")
    tok = load_chat_tokenizer(path)
    model: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
    return model.to(device), tok
