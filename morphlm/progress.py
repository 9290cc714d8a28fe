"""One progress bar for every long loop (fit, tokenizing, benchmarks, searches, latency timing); a leaf module
(like morphlm.io) that every layer may import.

On a terminal it is tqdm's live bar. When stderr is not a TTY (a log file, CI, ``nohup``) tqdm's redraws are
carriage returns on one ever-growing line (8 KB per 40 steps in a log); there the bar degrades to one plain
line every ``MORPHLM_PROGRESS_EVERY`` seconds (default 30) plus the first and the last state.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Iterable, TextIO

DEFAULT_EVERY_S = 30.0


def progress_every_s() -> float:
    """Seconds between log lines when stderr is not a terminal (``MORPHLM_PROGRESS_EVERY``, default 30)."""
    raw = os.environ.get("MORPHLM_PROGRESS_EVERY")
    if raw is None or raw == "":
        return DEFAULT_EVERY_S
    try:
        every = float(raw)
    except ValueError:
        raise ValueError(f"MORPHLM_PROGRESS_EVERY={raw!r} is not a number; set it to seconds between progress "
                         f"lines (e.g. 30)") from None
    if every < 0:
        raise ValueError(f"MORPHLM_PROGRESS_EVERY={raw!r} must be >= 0 seconds")
    return every


class _LineWriter:
    """A file for tqdm that turns each redraw (``\\r`` + status) into one line of its own."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, s: str) -> int:
        for part in s.replace("\r", "\n").split("\n"):
            part = part.strip()
            if part:
                self.stream.write(part + "\n")
        return len(s)

    def flush(self) -> None:
        self.stream.flush()


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable: Iterable | None = None, *, total: float | None = None, desc: str | None = None,
                 unit: str = "it", initial: float = 0, disable: bool = False, leave: bool = True,
                 file: TextIO | None = None, **kwargs: Any):
    """A tqdm bar on ``file`` (default: the current ``sys.stderr``): live on a terminal, one line every
    :func:`progress_every_s` seconds otherwise. Same interface as ``tqdm`` (update, set_postfix, close, iterate)."""
    from tqdm import tqdm

    stream = file if file is not None else sys.stderr
    if _is_tty(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, leave=leave,
                    file=stream, dynamic_ncols=True, **kwargs)
    every = progress_every_s()
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, leave=True,
                file=_LineWriter(stream), mininterval=every, maxinterval=max(every, 1.0), miniters=1, ncols=120,
                ascii=True, **kwargs)
