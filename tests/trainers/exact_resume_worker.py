"""Runs ``trainers/grpo.py``'s main with the test env; SIGKILLs itself at a given step.

``python exact_resume_worker.py KILL_AT [grpo args...]``: KILL_AT 0 runs to the end;
otherwise the process kills itself (SIGKILL: no cleanup, no atexit, no flush of
anything not yet on disk) right after logging step KILL_AT, as a crash or an
out-of-memory kill would.
"""

from __future__ import annotations

import os
import signal
import sys

from areal_env.metrics import MetricsLogger
from areal_env.testing import register_test_envs
from areal_env.trainers import grpo


def main() -> int:
    kill_at = int(sys.argv[1])
    register_test_envs()
    log = MetricsLogger.log

    def log_then_maybe_die(self, step, values):
        log(self, step, values)
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    MetricsLogger.log = log_then_maybe_die
    return grpo.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
