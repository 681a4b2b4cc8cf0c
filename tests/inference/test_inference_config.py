"""inference.* config checks and the engines the registry builds from them."""

from __future__ import annotations

import pytest

from areal_env.config import ModelConfig
from areal_env.inference.local import LocalEngine
from areal_env.inference.registry import InferenceConfig, load_engine
from areal_env.inference.remote.engine import RemoteEngine


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"backend": "vllm"}, "needs servers"),
        ({"backend": "local", "servers": ["http://a:1"]}, "for the vllm and sglang backends"),
        ({"backend": "local", "launch": True}, "for the vllm and sglang backends"),
        ({"backend": "vllm", "servers": ["a:1"]}, "http"),
        ({"backend": "vllm", "launch": True, "num_servers": 0}, "num_servers"),
        ({"update_mode": "later"}, "update_mode"),
    ],
)
def test_bad_inference_config_names_the_key(kwargs, words):
    with pytest.raises(ValueError, match=words):
        InferenceConfig(**kwargs)


def test_server_backends_do_not_load_the_model(tmp_path, monkeypatch):
    import areal_env.inference.registry as registry

    def refuse(*args, **kwargs):
        raise AssertionError("a server engine must not load the model in this process")

    monkeypatch.setattr(registry, "load_for_inference", refuse)
    config = InferenceConfig(backend="sglang", servers=["http://127.0.0.1:9"], update_mode="drain")
    engine, tokenizer = load_engine(ModelConfig(), config, str(tmp_path))
    assert isinstance(engine, RemoteEngine)
    assert engine.kind == "sglang" and engine.update_mode == "drain"
    assert tokenizer.chat_template


def test_local_backend_gets_the_update_mode(tmp_path):
    engine, _ = load_engine(ModelConfig(), InferenceConfig(update_mode="drain"), str(tmp_path))
    assert isinstance(engine, LocalEngine) and engine.update_mode == "drain"
