"""The staleness bound: when may a new episode start?

AReaL's admission rule, counted in episodes::

    accepted + running < (max_head_offpolicyness + version + 1) * batch_size

- ``accepted``: episodes that finished and entered the batch buffer since the
  run began (consumed ones included; it never goes down).
- ``running``: episodes admitted and not yet finished.
- ``version``: the trainer's weight version (number of weight updates so far).
- ``batch_size``: episodes per training batch (groups x n_samples).
- ``max_head_offpolicyness`` (eta): how many weight versions a sample may lag.

At version ``v`` the trainer has consumed ``v`` batches, so the rule lets
episodes of batches ``v .. v + eta`` exist at once, and none later. An episode
admitted at version ``v`` is trained at version ``v + eta`` at the latest.
``eta = 0`` is synchronous RL: only the episodes of batch ``v`` may run.

A group of ``k`` episodes is admitted whole, so it fits when each of its
episodes would pass the rule one after the other::

    accepted + running + k <= (eta + version + 1) * batch_size

Example:
    batch_size = 4 episodes (2 groups of n_samples = 2), eta = 1.
    The limit is ``(1 + version + 1) * 4``; each group takes 2 slots::

        event                          version limit accepted running  group fits?
        start                          0       8     0        0        0+0+2 <= 8 yes
        admit 4 groups                 0       8     0        8        0+8+2 <= 8 no
        2 groups finish, accepted      0       8     4        4        4+4+2 <= 8 no
        trainer takes batch 0, v -> 1  1       12    4        4        4+4+2 <= 12 yes
        admit 2 groups                 1       12    4        8        4+8+2 <= 12 no

    The same walk through the functions below:

    >>> counters = AdmissionCounters(batch_size=4, max_head_offpolicyness=1)
    >>> counters.capacity(version=0)
    8
    >>> for _ in range(4):
    ...     counters.on_start(2)
    >>> counters.can_admit(2, version=0)
    False
    >>> counters.on_accept(2); counters.on_accept(2)
    >>> (counters.accepted, counters.running, counters.can_admit(2, version=0))
    (4, 4, False)
    >>> counters.capacity(version=1)
    4
"""

from __future__ import annotations

from dataclasses import dataclass

from areal_env.types import PROMPT_VERSION, Trajectory


def staleness_limit(*, version: int, batch_size: int, max_head_offpolicyness: int) -> int:
    """Upper bound on ``accepted + running`` at ``version``, in episodes.

    Example:
        >>> staleness_limit(version=0, batch_size=8, max_head_offpolicyness=0)
        8
        >>> staleness_limit(version=3, batch_size=8, max_head_offpolicyness=2)
        48
    """
    return (max_head_offpolicyness + version + 1) * batch_size


def admission_capacity(
    *, accepted: int, running: int, version: int, batch_size: int, max_head_offpolicyness: int
) -> int:
    """How many more episodes may start now under the staleness rule (never negative).

    Example:
        >>> admission_capacity(accepted=8, running=4, version=1, batch_size=8,
        ...                    max_head_offpolicyness=0)
        4
    """
    limit = staleness_limit(
        version=version, batch_size=batch_size, max_head_offpolicyness=max_head_offpolicyness
    )
    return max(0, limit - accepted - running)


@dataclass(kw_only=True, slots=True)
class AdmissionCounters:
    """The two counters of the admission rule, and the moves that change them.

    ``on_start`` when a group is admitted, then exactly one of ``on_accept``
    (it entered the batch buffer) or ``on_reject`` (dropped, filtered or
    cancelled: its slots are freed and refilled); an accepted group that grew
    too stale in the buffer is taken back with ``on_evict``.
    """

    batch_size: int
    """Episodes per training batch (groups per batch x n_samples)."""
    max_head_offpolicyness: int
    """eta: how many weight versions a sample may lag behind the trainer."""
    accepted: int = 0
    """Episodes accepted into the batch buffer since the run began."""
    running: int = 0
    """Episodes admitted whose group has not finished yet."""

    def capacity(self, version: int) -> int:
        """Episodes that may still start at ``version``."""
        return admission_capacity(
            accepted=self.accepted,
            running=self.running,
            version=version,
            batch_size=self.batch_size,
            max_head_offpolicyness=self.max_head_offpolicyness,
        )

    def can_admit(self, n: int, version: int) -> bool:
        """True when ``n`` more episodes (one group) fit at ``version``."""
        return n <= self.capacity(version)

    def on_start(self, n: int) -> None:
        """Count ``n`` episodes as running."""
        self.running += n

    def on_accept(self, n: int) -> None:
        """Move ``n`` finished episodes from running to accepted."""
        self._release(n)
        self.accepted += n

    def on_reject(self, n: int) -> None:
        """Free ``n`` running episodes that will not be trained on."""
        self._release(n)

    def on_evict(self, n: int) -> None:
        """Take back ``n`` accepted episodes that became too stale to train on.

        Their slots are freed, so fresh episodes take their place.
        """
        assert 0 <= n <= self.accepted, f"evicting {n} episodes, only {self.accepted} accepted"
        self.accepted -= n

    def _release(self, n: int) -> None:
        assert 0 <= n <= self.running, f"releasing {n} episodes, only {self.running} running"
        self.running -= n


def trajectory_staleness(trajectory: Trajectory, trainer_version: int) -> int:
    """Weight versions between the trainer and the oldest token of ``trajectory``.

    An episode with no generated token has nothing stale to train on, so it
    counts 0.

    Example:
        >>> from areal_env.types import Sample
        >>> t = Trajectory(samples=[Sample(input_ids=[1, 2, 3], loss_mask=[0, 1, 1],
        ...                                logprobs=[0.0] * 3, versions=[-1, 2, 3])])
        >>> trajectory_staleness(t, trainer_version=4)
        2
    """
    oldest = trajectory.oldest_version
    if oldest == PROMPT_VERSION:
        return 0
    return trainer_version - oldest
