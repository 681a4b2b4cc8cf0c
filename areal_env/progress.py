"""Progress bars that suit where the output goes.

On a terminal a tqdm bar redraws in place several times a second. Redirected to
a file (a log, CI) every redraw is appended as a new frame: a 1000-step run
wrote 125 KB of bar frames. There the bar prints at most one line every
``LOG_INTERVAL_S`` seconds instead.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from tqdm import tqdm

LOG_INTERVAL_S = 30.0
"""Seconds between progress lines when the output is not a terminal."""


def progress_bar(
    *, total: int, desc: str, enabled: bool = True, initial: int = 0, file: IO[str] | None = None
) -> tqdm[Any]:
    """A tqdm bar for ``total`` steps; throttled to a line every 30 s off a terminal.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> bar = progress_bar(total=1000, desc="steps", file=out)
        >>> for _ in range(1000):
        ...     bar.update(1)
        >>> bar.close()
        >>> out.getvalue().count("steps") <= 3  # first frame, maybe one more, the last
        True
    """
    stream = sys.stderr if file is None else file
    interactive = bool(getattr(stream, "isatty", lambda: False)())
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        disable=not enabled,
        file=stream,
        dynamic_ncols=interactive,
        mininterval=0.1 if interactive else LOG_INTERVAL_S,
        maxinterval=LOG_INTERVAL_S * 2,
    )
