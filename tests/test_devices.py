"""areal_env.devices: detection, names, process-group backends, RNG state, empty init."""

from __future__ import annotations

import io
import random
import tokenize
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from areal_env import checkpoint, config, devices

REPO = Path(__file__).resolve().parents[1]
ACCELERATORS = ("cuda", "npu", "xpu", "mps")


@pytest.fixture
def present(monkeypatch):
    """Pretend exactly the accelerators named by ``present(...)`` exist."""

    def pretend(*kinds: str) -> None:
        monkeypatch.setattr(devices, "is_npu_available", lambda: "npu" in kinds)
        monkeypatch.setattr(devices, "is_xpu_available", lambda: "xpu" in kinds)
        monkeypatch.setattr(devices, "is_mps_available", lambda: "mps" in kinds)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: "cuda" in kinds)

    return pretend


def test_auto_is_cpu_on_this_machine():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert devices.available_device_type() == "cpu"
    assert devices.resolve_device("auto") == "cpu"
    assert config.resolve_device("auto") == "cpu"


@pytest.mark.parametrize(
    ("kinds", "best"),
    [
        ((), "cpu"),
        (("mps",), "mps"),
        (("xpu",), "xpu"),
        (("cuda", "xpu"), "cuda"),
        (("npu", "cuda"), "npu"),  # accelerate's order: transfer_to_npu makes cuda answer
        (("npu",), "npu"),
    ],
)
def test_detection_picks_the_best_accelerator_present(present, kinds, best):
    present(*kinds)
    assert devices.available_device_type() == best
    assert devices.resolve_device("auto") == best
    assert config.resolve_device("auto") == best


@pytest.mark.parametrize("name", ["cpu", "cuda", "npu", "xpu", "mps", "cuda:1"])
def test_explicit_names_pass_through(present, name):
    present()  # nothing present: an explicit choice is still taken as given
    assert devices.resolve_device(name) == name


def test_unknown_device_raises_naming_the_key():
    with pytest.raises(ValueError, match=r"model\.device.*'tpu'"):
        devices.resolve_device("tpu")
    with pytest.raises(ValueError, match=r"inference\.device"):
        devices.resolve_device("gpu", key="inference.device")
    with pytest.raises(ValueError, match=r"model\.device"):
        config.resolve_device("tpu")
    with pytest.raises(ValueError, match=r"model\.device"):
        config.ModelConfig(device="tpu")


def test_config_choices_are_the_device_types():
    assert set(config.DEVICES) == {"auto", *devices.DEVICE_TYPES}
    assert "xpu" in config.DEVICES
    assert config.ModelConfig(device="xpu").device == "xpu"


@pytest.mark.parametrize(
    ("kind", "backend"),
    [("cuda", "nccl"), ("cuda:0", "nccl"), ("npu", "hccl"), ("cpu", "gloo"), ("mps", "gloo")],
)
def test_process_group_backend(kind, backend):
    assert devices.process_group_backend(kind) == backend


def test_xpu_backend_is_xccl_or_ccl(monkeypatch):
    monkeypatch.setattr(devices, "is_xccl_available", lambda: True)
    assert devices.process_group_backend("xpu") == "xccl"
    monkeypatch.setattr(devices, "is_xccl_available", lambda: False)
    assert devices.process_group_backend("xpu") == "ccl"


def test_unknown_process_group_backend_raises():
    with pytest.raises(ValueError, match="tpu"):
        devices.process_group_backend("tpu")


class FakeAccelerator(types.SimpleNamespace):
    """A torch device module: current device and one RNG state per device."""

    def __init__(self) -> None:
        super().__init__(current=None, states=[torch.tensor([1]), torch.tensor([2])])

    def set_device(self, index: int) -> None:
        self.current = index

    def get_rng_state_all(self) -> list[torch.Tensor]:
        return [s.clone() for s in self.states]

    def set_rng_state_all(self, states: list[torch.Tensor]) -> None:
        self.states = [s.clone() for s in states]


@pytest.fixture
def fake_npu(monkeypatch, present):
    present("npu")
    fake = FakeAccelerator()
    real = torch.get_device_module
    monkeypatch.setattr(torch, "get_device_module", lambda k: fake if k == "npu" else real(k))
    return fake


def test_set_local_device(fake_npu):
    devices.set_local_device("cpu", 3)  # no-op, no error
    devices.set_local_device("mps", 3)
    assert fake_npu.current is None
    devices.set_local_device("npu", 1)
    assert fake_npu.current == 1


def test_rng_state_round_trip_restores_torch_cpu_rng():
    torch.manual_seed(123)
    torch.rand(3)
    saved = devices.rng_state()
    want = torch.rand(5)
    torch.rand(7)  # move on
    devices.set_rng_state(saved)
    assert torch.equal(torch.rand(5), want)


def test_rng_state_holds_the_accelerators_states(fake_npu):
    saved = devices.rng_state()
    assert [int(s) for s in saved["npu"]] == [1, 2]
    fake_npu.states = [torch.tensor([9]), torch.tensor([9])]
    devices.set_rng_state(saved)
    assert [int(s) for s in fake_npu.states] == [1, 2]


def test_accelerator_rng_of_an_absent_device_is_skipped(present):
    # A checkpoint written on a GPU ({"torch", "cuda"}) resumes on a CPU machine.
    present()
    torch.manual_seed(5)
    saved = {"torch": torch.get_rng_state(), "cuda": [torch.zeros(8, dtype=torch.uint8)]}
    want = torch.rand(2)
    devices.set_rng_state(saved)
    assert torch.equal(torch.rand(2), want)


def test_checkpoint_rng_capture_and_restore():
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    saved = checkpoint.capture_rng()
    want = (random.random(), float(np.random.rand()), torch.rand(2))
    random.random(), np.random.rand(), torch.rand(4)
    checkpoint.restore_rng(saved)
    got = (random.random(), float(np.random.rand()), torch.rand(2))
    assert got[:2] == want[:2] and torch.equal(got[2], want[2])


def test_empty_init_puts_parameters_on_meta():
    with devices.empty_init():
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8))
    assert all(p.device.type == "meta" for p in model.parameters())
    assert all(b.device.type == "cpu" for b in model.buffers())  # buffers stay real
    with devices.empty_init(include_buffers=True):
        bn = torch.nn.BatchNorm1d(8)
    assert all(b.device.type == "meta" for b in bn.buffers())
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"  # only inside the block


def test_empty_init_builds_a_causal_lm_without_memory():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
    )
    with devices.empty_init():
        model = Qwen2ForCausalLM(cfg)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {b.device.type for b in model.buffers()} <= {"cpu"}  # e.g. rotary tables


def test_ranks_from_the_launchers_environment(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert (devices.rank(), devices.local_rank(), devices.world_size()) == (0, 0, 1)
    assert not devices.launched()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (devices.rank(), devices.local_rank(), devices.world_size()) == (3, 1, 4)
    assert devices.launched()


def test_distributed_init_takes_its_backend_from_devices(monkeypatch):
    from areal_env.trainers import distributed

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    distributed.init(device="cpu")
    try:
        assert torch.distributed.get_backend() == "gloo"
    finally:
        distributed.shutdown(notify=False)


def _device_names(path: Path) -> list[str]:
    """Code (not docstrings or comments) of ``path`` that names a device type."""
    hits = []
    toks = list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))
    for prev, tok in zip([None, *toks], toks, strict=False):
        if tok.type == tokenize.STRING:
            try:
                value = eval(tok.string)
            except Exception:  # f-strings and the like
                continue
            if isinstance(value, str) and value.split(":", 1)[0] in ACCELERATORS:
                hits.append(f"{path}:{tok.start[0]}: {tok.string}")
        elif tok.type == tokenize.NAME and tok.string in ACCELERATORS:
            if prev is not None and prev.string == ".":  # torch.cuda, x.cuda(), ...
                hits.append(f"{path}:{tok.start[0]}: .{tok.string}")
    return hits


def test_only_devices_py_names_a_device_type():
    files = [
        p
        for top in ("areal_env", "trainers", "agents", "envs")
        for p in (REPO / top).rglob("*.py")
        # megatron-core is a CUDA library: its backend shims torch.cuda on CPU and seeds
        # megatron's CUDA RNG tracker, which no device abstraction can name for it.
        if p not in (REPO / "areal_env" / "devices.py", REPO / "trainers/backends/megatron.py")
    ]
    assert len(files) > 20
    hits = [h for p in files for h in _device_names(p)]
    assert hits == []


def test_the_scan_finds_device_names(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        '"""Docstring naming cuda is fine."""\nx = "cuda"\ny = torch.npu.is_available()\n'
    )
    assert len(_device_names(bad)) == 2
