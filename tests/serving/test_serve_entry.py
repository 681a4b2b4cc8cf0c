"""``python -m areal_env.serve``: the embedded tiny model served from the trainer's config tree.

Mutations tried (each made the named test fail):
- ``build_client`` not passing the model name (responses named "areal-env-policy"):
  test_serve_answers_the_official_client_with_the_tiny_model;
- ``main`` letting a config ValueError escape instead of returning 2:
  test_config_errors_exit_2_and_name_the_key;
- ``serve`` not closing the engine on the way out (``engine._closed`` stays False):
  test_serve_answers_the_official_client_with_the_tiny_model.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.request

import pytest
from openai import AsyncOpenAI

from areal_env.config import load_config
from areal_env.serve import ServeConfig, build_client, main, serve
from areal_env.testing import TINY_MODEL_OVERRIDES


def overrides(tmp_path, *extra):
    return ["server.port=0", f"output_dir={tmp_path}", *TINY_MODEL_OVERRIDES, *extra]


async def test_serve_answers_the_official_client_with_the_tiny_model(tmp_path):
    cfg = load_config(ServeConfig, overrides(tmp_path, "inference.sampling.max_new_tokens=4"))
    client = build_client(cfg)
    stop, ready = asyncio.Event(), asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(cfg, client, stop=stop, on_ready=ready.set_result))
    server = await ready
    agent = AsyncOpenAI(base_url=server.base_url, api_key="none", max_retries=0)
    try:
        assert [m.id for m in (await agent.models.list()).data] == ["areal-env-tiny"]
        resp = await agent.chat.completions.create(
            model="areal-env-tiny", messages=[{"role": "user", "content": "1+1="}]
        )
        assert resp.model == "areal-env-tiny" and resp.usage.completion_tokens <= 4
        text = await agent.completions.create(model="areal-env-tiny", prompt="1+1=", max_tokens=2)
        assert text.usage.completion_tokens <= 2
    finally:
        await agent.close()
        stop.set()
        await task
    assert client.engine._closed
    assert (tmp_path / "tiny_model" / "config.json").exists()


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["server.port=70000"], "server.port"),
        (["model.path=/no/such/model"], "model.path"),
        (["server.nope=1"], "server.nope"),
    ],
)
def test_config_errors_exit_2_and_name_the_key(tmp_path, capsys, args, key):
    assert main(overrides(tmp_path, *args)) == 2
    assert key in capsys.readouterr().err


def test_python_m_areal_env_serve_serves_until_interrupted(tmp_path):
    cmd = [sys.executable, "-m", "areal_env.serve", *overrides(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving areal-env-tiny at http://127.0.0.1:"), line
        base_url = line.split()[-1]
        request = urllib.request.Request(
            base_url + "/chat/completions",
            data=json.dumps(
                {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            body = json.loads(resp.read())
        assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] <= 3
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
