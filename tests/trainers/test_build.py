"""The env factory the trainer builds from ``env.id`` and ``env.kwargs``."""

from __future__ import annotations

import pytest

from areal_env.envs.math.env import MathEnv
from areal_env.trainers.build import make_env_factory


def test_factory_makes_fresh_bare_envs_with_the_kwargs() -> None:
    factory = make_env_factory("areal/Math-v0", {"max_operand": 5, "ops": ["*"]})
    first, second = factory(), factory()
    assert type(first) is MathEnv and first is not second
    obs, info = first.reset(seed=0)
    a, b = (int(x) for x in obs[-1]["content"].rstrip("=").split("*"))
    assert max(a, b) <= 5 and info["answer"] == str(a * b)


def test_unknown_id_names_the_registered_ones() -> None:
    with pytest.raises(ValueError, match="'areal/Nope-v0' is not registered.*areal/Math-v0"):
        make_env_factory("areal/Nope-v0", {})


def test_bad_kwargs_fail_when_the_factory_is_built() -> None:
    with pytest.raises(ValueError, match="max_operand must be an int >= 1"):
        make_env_factory("areal/Math-v0", {"max_operand": -1})


def test_envs_of_a_run_share_the_runs_resource_registry() -> None:
    from areal_env.resources import ResourceRegistry

    registry = ResourceRegistry(name="run")
    factory = make_env_factory("areal/Math-v0", {}, registry)
    first, second = factory(), factory()
    assert first.resources is registry and second.resources is registry
    index = first.resources.get("index", object)
    assert second.resources.get("index", object) is index  # built once, shared
    registry.close()
    assert make_env_factory("areal/Math-v0", {})().resources is not registry
