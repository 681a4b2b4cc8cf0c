"""Offline model builders (the embedded tiny Qwen2 and its tokenizer)."""
