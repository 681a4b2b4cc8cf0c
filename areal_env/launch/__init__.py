"""Launchers that place a training run's processes on a cluster.

``python -m areal_env.launch.ray`` (module :mod:`areal_env.launch.ray`) places the
trainer ranks, the inference servers and the rollout driver (rank 0) as Ray
actors; see docs/distributed.md. Nothing here imports Ray until a launcher runs,
so ``import areal_env.launch`` works without the ``ray`` extra.
"""
