"""Run a training job on a Ray cluster: trainer ranks and inference servers as actors.

``python -m areal_env.launch.ray [launcher options] -- [trainer args]`` places

* ``--num-trainers N`` trainer ranks, one actor each, reserving
  ``--cpus-per-trainer`` CPUs and ``--gpus-per-trainer`` GPUs (0 or 1) in one
  placement group. Each actor sets torchrun's variables (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) in its own
  environment and calls the trainer's ``main(argv)``, so ``trainers/distributed.py``
  joins the group exactly as under torchrun. Rank 0 is the rollout driver (rollout
  scheduler, engine, envs, metrics, checkpoints); the others hold model shards
  (``train.backend=fsdp``, added when N > 1 and no backend is given).
* ``--num-servers S`` vLLM / SGLang servers, one actor each, reserving
  ``--gpus-per-server`` GPUs. Each starts its server on a free port of its own
  node, waits until ``/health`` answers and returns ``http://<node ip>:<port>``;
  the trainer gets ``inference.servers=[...]`` and attaches to them. Without
  ``--num-servers``, a config with ``inference.launch=true`` gets its
  ``inference.num_servers`` servers placed this way (not started by rank 0).

Without ``--address`` the launcher starts a local Ray cluster; with it
(``auto``, ``ray://host:10001``, ``host:6379``) it attaches to a running one. The
launcher waits for every rank, prints each rank's result and exits non-zero when
one failed; a failed rank ends the others (as torchrun does), and Ctrl-C kills
every actor and server.

The trainer config is the same as under torchrun: ``torchrun --nproc-per-node 2
trainers/grpo.py train.backend=fsdp ...`` and ``python -m areal_env.launch.ray
--num-trainers 2 -- train.backend=fsdp ...`` run the same job.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import shlex
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRAINER_ENTRY = "areal_env.trainers.grpo:main"
"""Default ``module:function`` each trainer rank runs with the trainer args."""
CONFIG_SCHEMA = "areal_env.trainers.config:GRPOConfig"
"""Config class of the default trainer; read by the launcher for the server settings.

Both are named by string: this package sits below ``areal_env.trainers`` in the
import layers and only reaches it at run time."""
SERVER_KINDS = ("vllm", "sglang")
STRATEGIES = ("PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD")


class LaunchError(RuntimeError):
    """The job could not be placed or started (resources, servers, actors)."""


@dataclass(kw_only=True)
class ServerPlan:
    """How to start one inference server (sent to each server actor)."""

    kind: str
    """``vllm`` or ``sglang``: the command builder, and the trainer's ``inference.backend``."""
    python: str
    """Interpreter that runs the server (on the server's node)."""
    model: str
    """Model folder or hub id the server loads (a path every server node can read)."""
    max_model_len: int
    extra_args: list[str] = field(default_factory=list)
    log_dir: str = "outputs/servers"
    startup_timeout: float = 600.0
    command: list[str] | None = None
    """A custom command instead of vLLM's / SGLang's; ``{host}``, ``{port}``,
    ``{model}``, ``{python}`` and ``{max_model_len}`` in its words are filled in."""
    health_path: str = "/health"

    def build(self, host: str, port: int) -> list[str]:
        """The command line for a server listening on ``host:port``."""
        if self.command is not None:
            values = {
                "host": host,
                "port": port,
                "model": self.model,
                "python": self.python,
                "max_model_len": self.max_model_len,
            }
            return [word.format(**values) for word in self.command]
        from areal_env.inference.remote.launch import sglang_command, vllm_command

        builder = vllm_command if self.kind == "vllm" else sglang_command
        return builder(
            self.python, self.model, host=host, port=port,
            max_model_len=self.max_model_len, extra_args=self.extra_args,
        )  # fmt: skip


@dataclass(kw_only=True)
class LaunchSpec:
    """What to place: the launcher's command-line options."""

    trainer_args: list[str] = field(default_factory=list)
    """Arguments of the trainer's ``main`` (``--config F.yaml``, ``key=value``, ``--resume``)."""
    num_trainers: int = 1
    cpus_per_trainer: float = 1.0
    gpus_per_trainer: float = 0.0
    strategy: str = "PACK"
    """Placement-group strategy of the trainer ranks (``STRICT_PACK``: all on one node)."""
    num_servers: int | None = None
    """Inference servers to place; None: ``inference.num_servers`` if the config says
    ``inference.launch=true``, else none."""
    cpus_per_server: float = 1.0
    gpus_per_server: float = 1.0
    server_kind: str | None = None
    """None: the config's ``inference.backend`` (``vllm`` if it is ``local``)."""
    server_python: str | None = None
    server_command: list[str] | None = None
    """See :attr:`ServerPlan.command`."""
    address: str | None = None
    """Ray cluster to attach to; None starts a local one."""
    num_cpus: int | None = None
    """CPUs of a local cluster (None: all of this machine's)."""
    num_gpus: int | None = None
    """GPUs of a local cluster (None: all of this machine's)."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables of every actor (Ray ``runtime_env``)."""
    setup: list[str] = field(default_factory=list)
    """``module:function`` names each trainer rank calls before the trainer (e.g. to
    register a custom env)."""
    entry: str = TRAINER_ENTRY
    placement_timeout: float = 600.0
    """Seconds to wait for the cluster to have room for the trainer ranks."""

    def __post_init__(self) -> None:
        if self.num_trainers < 1:
            raise ValueError(f"--num-trainers must be >= 1, got {self.num_trainers}")
        if self.cpus_per_trainer < 0 or self.cpus_per_server < 0:
            raise ValueError("--cpus-per-trainer and --cpus-per-server must be >= 0")
        if self.gpus_per_trainer not in (0, 1):
            raise ValueError(
                f"--gpus-per-trainer must be 0 or 1 (one device per rank), "
                f"got {self.gpus_per_trainer:g}"
            )
        if self.cpus_per_trainer == 0 and self.gpus_per_trainer == 0:
            raise ValueError("a trainer rank must reserve some CPUs or a GPU")
        if self.gpus_per_server < 0:
            raise ValueError(f"--gpus-per-server must be >= 0, got {self.gpus_per_server:g}")
        if self.num_servers is not None and self.num_servers < 0:
            raise ValueError(f"--num-servers must be >= 0, got {self.num_servers}")
        if self.server_kind is not None and self.server_kind not in SERVER_KINDS:
            raise ValueError(
                f"--server-kind must be one of {SERVER_KINDS}, got {self.server_kind!r}"
            )
        if self.strategy not in STRATEGIES:
            raise ValueError(f"--strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        for name in (self.entry, *self.setup):
            if ":" not in name:
                raise ValueError(f"expected module:function, got {name!r}")


@dataclass
class RankResult:
    """What one trainer rank ended with."""

    rank: int
    returncode: int
    error: str = ""
    """``ExceptionType: message`` when the rank raised, or why it is gone."""
    traceback: str = ""


def _resolve(name: str) -> Callable[..., Any]:
    module, _, attr = name.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


def _node_ip() -> str:
    import ray

    return str(ray.util.get_node_ip_address())


def _free_port(host: str = "") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class TrainerRank:
    """A Ray actor holding one trainer rank (a process of its own)."""

    def node(self) -> dict[str, Any]:
        """Where this actor runs: node IP and the GPU ids Ray gave it."""
        import ray

        gpus = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
        return {"ip": _node_ip(), "gpus": [str(g) for g in gpus], "pid": os.getpid()}

    def free_port(self) -> int:
        """A free TCP port on this node (rank 0's: the group's MASTER_PORT)."""
        return _free_port()

    def run(
        self, env: dict[str, str], argv: list[str], setup: list[str], entry: str, cwd: str
    ) -> RankResult:
        """Set torchrun's variables, run the setup functions and the trainer's main."""
        rank = int(env["RANK"])
        os.environ.update(env)
        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)  # relative paths in the config mean what they mean for the launcher
        try:
            for name in setup:
                _resolve(name)()
            code = _resolve(entry)(list(argv))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException as e:
            return RankResult(rank, 1, f"{type(e).__name__}: {e}", traceback.format_exc())
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        return RankResult(rank, 0 if code is None else int(code))


class InferenceServer:
    """A Ray actor holding one vLLM / SGLang server process on its node."""

    def __init__(self) -> None:
        self._server: Any = None

    def start(self, plan: ServerPlan, index: int) -> str:
        """Start the server on a free port of this node; its URL once ``/health`` answers."""
        from areal_env.inference.remote.launch import ServerProcess, check_server_python

        if plan.command is None:
            plan.python = check_server_python(plan.python)
        host = _node_ip()
        port = _free_port(host)
        log = Path(plan.log_dir) / f"{plan.kind}-{index}.log"
        # Started from the actor's main thread, which lives as long as the actor:
        # the server gets SIGTERM (PDEATHSIG) if the actor dies.
        self._server = ServerProcess(plan.build(host, port), log, host=host, port=port)
        try:
            asyncio.run(self._server.wait_healthy(plan.startup_timeout, plan.health_path))
        except BaseException:
            self._server.stop()
            raise
        return str(self._server.url)

    def pid(self) -> int | None:
        """The server's process id (None before start)."""
        return None if self._server is None else int(self._server.pid)

    def stop(self) -> None:
        """Stop the server's whole process group (idempotent)."""
        if self._server is not None:
            self._server.stop()


def parse_args(argv: Sequence[str] | None = None) -> LaunchSpec:
    """Launcher options before ``--``, trainer arguments after it.

    Raises:
        SystemExit: bad options (argparse's usage message); ValueError: bad values.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    trainer: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, trainer = args[:cut], args[cut + 1 :]
    p = argparse.ArgumentParser(
        prog="python -m areal_env.launch.ray",
        description="Run the trainer on a Ray cluster (docs/distributed.md).",
        epilog="Trainer arguments go after --, e.g. -- --config run.yaml train.steps=100",
        allow_abbrev=False,
    )
    p.add_argument("--address", default=None, help="Ray cluster to attach to (auto, ray://...)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local cluster")
    p.add_argument("--num-gpus", type=int, default=None, help="GPUs of a local cluster")
    p.add_argument("--num-trainers", type=int, default=1)
    p.add_argument("--cpus-per-trainer", type=float, default=1.0)
    p.add_argument("--gpus-per-trainer", type=float, default=0.0)
    p.add_argument("--strategy", default="PACK", choices=STRATEGIES)
    p.add_argument("--num-servers", type=int, default=None)
    p.add_argument("--cpus-per-server", type=float, default=1.0)
    p.add_argument("--gpus-per-server", type=float, default=1.0)
    p.add_argument("--server-kind", default=None, choices=SERVER_KINDS)
    p.add_argument("--server-python", default=None)
    p.add_argument(
        "--server-command",
        default=None,
        help="custom server command; {host} {port} {model} {python} {max_model_len} filled in",
    )
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--setup", action="append", default=[], metavar="MODULE:FUNCTION")
    p.add_argument("--entry", default=TRAINER_ENTRY, metavar="MODULE:FUNCTION")
    p.add_argument("--placement-timeout", type=float, default=600.0)
    ns, rest = p.parse_known_args(args)
    env = {}
    for item in ns.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--env expects KEY=VALUE, got {item!r}")
        env[key] = value
    return LaunchSpec(
        trainer_args=[*rest, *trainer],
        num_trainers=ns.num_trainers,
        cpus_per_trainer=ns.cpus_per_trainer,
        gpus_per_trainer=ns.gpus_per_trainer,
        strategy=ns.strategy,
        num_servers=ns.num_servers,
        cpus_per_server=ns.cpus_per_server,
        gpus_per_server=ns.gpus_per_server,
        server_kind=ns.server_kind,
        server_python=ns.server_python,
        server_command=None if ns.server_command is None else shlex.split(ns.server_command),
        address=ns.address,
        num_cpus=ns.num_cpus,
        num_gpus=ns.num_gpus,
        env=env,
        setup=ns.setup,
        entry=ns.entry,
        placement_timeout=ns.placement_timeout,
    )


def _has_key(args: Sequence[str], key: str) -> bool:
    return any(a.startswith(f"{key}=") for a in args)


def _trainer_config(spec: LaunchSpec) -> Any:
    """The trainer's config as the ranks will read it (ValueError on a bad one)."""
    from areal_env.config import load_config

    return load_config(_resolve(CONFIG_SCHEMA), list(spec.trainer_args))  # type: ignore[arg-type]


def server_plan(spec: LaunchSpec, cfg: Any) -> tuple[int, ServerPlan | None]:
    """How many servers to place and how to start them, from the options and the config."""
    inference = cfg.inference
    count = spec.num_servers
    if count is None:
        count = inference.num_servers if inference.launch else 0
    if count == 0:
        return 0, None
    kind = spec.server_kind or (inference.backend if inference.backend in SERVER_KINDS else "vllm")
    if inference.servers:
        raise ValueError(
            f"inference.servers={inference.servers} and {count} servers to place: give one"
        )
    from areal_env.models.load import model_dir

    model = model_dir(cfg.model, cfg.output_dir)
    max_len = inference.max_model_len
    if max_len is None:
        from transformers import AutoConfig

        max_len = int(getattr(AutoConfig.from_pretrained(model), "max_position_embeddings", 2048))
    plan = ServerPlan(
        kind=kind,
        python=spec.server_python or inference.server_python or sys.executable,
        model=str(Path(model).resolve()) if Path(model).exists() else model,
        max_model_len=max_len,
        extra_args=list(inference.server_args),
        log_dir=str((Path(cfg.output_dir) / "servers").resolve()),
        startup_timeout=inference.startup_timeout,
        command=spec.server_command,
    )
    return count, plan


def trainer_argv(spec: LaunchSpec, kind: str | None, urls: Sequence[str]) -> list[str]:
    """The trainer args plus what the launcher decided (backend, server URLs)."""
    argv = list(spec.trainer_args)
    if spec.num_trainers > 1 and not _has_key(argv, "train.backend"):
        argv.append("train.backend=fsdp")
    if urls:
        quoted = ",".join(f'"{u}"' for u in urls)
        argv += [f"inference.backend={kind}", "inference.launch=false"]
        argv.append(f"inference.servers=[{quoted}]")
    return argv


def rank_envs(
    nodes: Sequence[dict[str, Any]], master_addr: str, master_port: int
) -> list[dict[str, str]]:
    """The torchrun variables of each rank, from where the ranks landed.

    Ranks on one node share ``CUDA_VISIBLE_DEVICES`` (the GPUs Ray gave them, in
    id order) and ``LOCAL_RANK`` is the index of the rank's own GPU in it, since
    ``distributed.init`` takes device ``LOCAL_RANK``; on CPU it counts the ranks of
    the node in rank order.

    Example:
        >>> envs = rank_envs([{"ip": "a", "gpus": []}, {"ip": "a", "gpus": []}], "a", 5)
        >>> [(e["RANK"], e["LOCAL_RANK"], e["LOCAL_WORLD_SIZE"]) for e in envs]
        [('0', '0', '2'), ('1', '1', '2')]
    """
    by_ip: dict[str, list[int]] = {}
    for rank, node in enumerate(nodes):
        by_ip.setdefault(node["ip"], []).append(rank)
    envs = []
    for rank, node in enumerate(nodes):
        peers = by_ip[node["ip"]]
        env = {
            "RANK": str(rank),
            "WORLD_SIZE": str(len(nodes)),
            "LOCAL_WORLD_SIZE": str(len(peers)),
            "MASTER_ADDR": master_addr,
            "MASTER_PORT": str(master_port),
            "GROUP_RANK": str(list(by_ip).index(node["ip"])),
        }
        if node["gpus"]:
            node_gpus = sorted({g for r in peers for g in nodes[r]["gpus"]}, key=_gpu_order)
            env["CUDA_VISIBLE_DEVICES"] = ",".join(node_gpus)
            env["LOCAL_RANK"] = str(node_gpus.index(node["gpus"][0]))
        else:
            env["LOCAL_RANK"] = str(peers.index(rank))
        envs.append(env)
    return envs


def _gpu_order(gpu: str) -> tuple[int, str]:
    return (int(gpu), "") if gpu.isdigit() else (sys.maxsize, gpu)


class RayJob:
    """The actors and placement group of one launch, and their teardown."""

    def __init__(self, spec: LaunchSpec) -> None:
        self.spec = spec
        self.ranks: list[Any] = []
        self.servers: list[Any] = []
        self.group: Any = None

    def _actor_options(self) -> dict[str, Any]:
        return {"runtime_env": {"env_vars": dict(self.spec.env)}} if self.spec.env else {}

    def start_servers(self, count: int, plan: ServerPlan) -> list[str]:
        """Place ``count`` server actors, start their servers; their URLs."""
        import ray

        actor = ray.remote(InferenceServer)
        for _ in range(count):
            self.servers.append(
                actor.options(
                    num_cpus=self.spec.cpus_per_server,
                    num_gpus=self.spec.gpus_per_server,
                    **self._actor_options(),
                ).remote()
            )
        refs = [s.start.remote(plan, i) for i, s in enumerate(self.servers)]
        urls = []
        for i, ref in enumerate(refs):
            try:
                urls.append(str(ray.get(ref)))
            except Exception as e:
                raise LaunchError(f"inference server {i} did not start: {_cause(e)}") from e
        return urls

    def place_trainers(self) -> list[dict[str, Any]]:
        """Reserve the ranks' resources, start their actors; where each one landed."""
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        spec = self.spec
        bundle: dict[str, float] = {}
        if spec.cpus_per_trainer:
            bundle["CPU"] = spec.cpus_per_trainer
        if spec.gpus_per_trainer:
            bundle["GPU"] = spec.gpus_per_trainer
        total = ray.cluster_resources()
        for key, amount in bundle.items():
            need = amount * spec.num_trainers
            if need > total.get(key, 0):
                raise LaunchError(
                    f"{spec.num_trainers} trainers x {amount:g} {key} = {need:g} {key}, "
                    f"but the Ray cluster has {total.get(key, 0):g} {key} in all"
                )
        self.group = placement_group([dict(bundle)] * spec.num_trainers, strategy=spec.strategy)
        try:
            ray.get(self.group.ready(), timeout=spec.placement_timeout)
        except ray.exceptions.GetTimeoutError:
            raise LaunchError(
                f"no room for {spec.num_trainers} trainers with {bundle} each "
                f"({spec.strategy}) after {spec.placement_timeout:g} s; "
                f"free now: {ray.available_resources()}"
            ) from None
        actor = ray.remote(TrainerRank)
        for i in range(spec.num_trainers):
            strategy = PlacementGroupSchedulingStrategy(
                placement_group=self.group, placement_group_bundle_index=i
            )
            self.ranks.append(
                actor.options(
                    num_cpus=spec.cpus_per_trainer,
                    num_gpus=spec.gpus_per_trainer,
                    scheduling_strategy=strategy,
                    **self._actor_options(),
                ).remote()
            )
        return list(ray.get([r.node.remote() for r in self.ranks]))

    def run_trainers(self, argv: list[str]) -> list[RankResult]:
        """Start every rank's trainer; wait for all (a failed rank ends the others)."""
        import ray

        nodes = self.place_trainers()
        master_addr = nodes[0]["ip"]
        master_port = int(ray.get(self.ranks[0].free_port.remote()))
        envs = rank_envs(nodes, master_addr, master_port)
        for env, node in zip(envs, nodes, strict=True):
            print(
                f"[launch] rank {env['RANK']}: node {node['ip']} pid {node['pid']} "
                f"local rank {env['LOCAL_RANK']}"
                + (f" GPU {','.join(node['gpus'])}" if node["gpus"] else ""),
                file=sys.stderr,
                flush=True,
            )
        cwd = os.getcwd()
        refs = {
            r.run.remote(env, argv, self.spec.setup, self.spec.entry, cwd): i
            for i, (r, env) in enumerate(zip(self.ranks, envs, strict=True))
        }
        results: dict[int, RankResult] = {}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            rank = refs[done[0]]
            try:
                results[rank] = ray.get(done[0])
            except Exception as e:  # the actor died (killed, OOM, segfault)
                results[rank] = RankResult(rank, 1, f"rank process died: {_cause(e)}")
            if results[rank].returncode != 0 and pending:
                for ref in pending:  # as torchrun: one failed rank ends the group
                    other = refs[ref]
                    ray.kill(self.ranks[other])
                    results[other] = RankResult(other, -9, f"stopped after rank {rank} failed")
                pending = []
        return [results[i] for i in range(len(self.ranks))]

    def close(self) -> None:
        """Stop the servers, kill every actor, free the placement group."""
        import ray

        if self.servers:
            try:
                ray.get([s.stop.remote() for s in self.servers], timeout=60)
            except Exception:
                pass
        for actor in [*self.servers, *self.ranks]:
            try:
                ray.kill(actor)
            except Exception:
                pass
        self.servers, self.ranks = [], []
        if self.group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.group)
            self.group = None


def _cause(e: BaseException) -> str:
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    return f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"


def launch(spec: LaunchSpec) -> list[RankResult]:
    """Place servers and trainer ranks on the Ray cluster, run the job, tear it down.

    Attaches to ``spec.address`` (or the cluster this process already joined) or
    starts a local cluster, which is shut down at the end.

    Raises:
        ValueError: a bad trainer config. LaunchError: no room, or a server that
        did not start.
    """
    import ray

    cfg = _trainer_config(spec)
    count, plan = server_plan(spec, cfg)
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {}
        if spec.address is None and not os.environ.get("RAY_ADDRESS"):  # a local cluster
            kwargs.update(include_dashboard=False, num_cpus=spec.num_cpus, num_gpus=spec.num_gpus)
        ray.init(address=spec.address, **kwargs)
        started = True
    job = RayJob(spec)
    try:
        urls = job.start_servers(count, plan) if plan is not None else []
        for i, url in enumerate(urls):
            print(f"[launch] inference server {i}: {url}", file=sys.stderr, flush=True)
        return job.run_trainers(trainer_argv(spec, plan.kind if plan else None, urls))
    finally:
        job.close()
        if started:
            ray.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; the exit code is 0 only when every rank returned 0."""
    try:
        spec = parse_args(argv)
    except ValueError as e:
        print(f"launch error: {e}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    try:
        results = launch(spec)
    except ValueError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except LaunchError as e:
        print(f"launch error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[launch] interrupted: actors and servers stopped", file=sys.stderr)
        return 130
    failed = [r for r in results if r.returncode != 0]
    for r in results:
        status = "ok" if r.returncode == 0 else f"exit {r.returncode}"
        print(f"[launch] rank {r.rank}: {status}" + (f" ({r.error})" if r.error else ""),
              file=sys.stderr)  # fmt: skip
    if not failed:
        took = time.monotonic() - t0
        print(f"[launch] {len(results)} ranks done in {took:.1f} s", file=sys.stderr)
        return 0
    first = next((r for r in failed if r.returncode != -9), failed[0])
    print(f"[launch] rank {first.rank} failed: {first.error or f'exit {first.returncode}'}",
          file=sys.stderr)  # fmt: skip
    if first.traceback:
        print(first.traceback, file=sys.stderr)
    return first.returncode if first.returncode > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
