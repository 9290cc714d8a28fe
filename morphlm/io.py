"""Crash-safe file writes, shared by every layer (checkpoints, token stores, tokenizers, exports).

A write goes to a temporary file in the target's folder (named per process, so two processes writing
the same path never share one), is flushed and fsynced, then renamed over the target, and the folder
itself is fsynced so the rename survives a power loss: a reader sees the old file or the new one, never
half of one. :func:`write_json` is the one atomic JSON writer (checkpoints, benchmark results).
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def temp_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename itself is still atomic
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` (text is UTF-8 encoded, newlines untouched) to ``path`` atomically."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        tmp.write_bytes(raw)


def json_text(data: Any, *, indent: int | None = 2, sort_keys: bool = True, allow_nan: bool = False,
              default: Callable[[Any], Any] | None = None) -> str:
    """``data`` as JSON text ending in a newline: the one serialization :func:`write_json` writes."""
    return json.dumps(data, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan, default=default) + "\n"


def write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 2, sort_keys: bool = True,
               allow_nan: bool = False, default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``data`` as JSON atomically (temporary file, fsync, rename, fsync of the folder); returns the path.
    ``allow_nan=False`` (the default) refuses NaN/inf, which strict JSON readers cannot parse."""
    path = Path(path)
    write_atomic(path, json_text(data, indent=indent, sort_keys=sort_keys, allow_nan=allow_nan, default=default))
    return path


def json_safe(value: Any) -> Any:
    """Replace non-finite floats (NaN, inf) by None, recursively, so the file stays strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def short_repr(value: Any, limit: int = 300) -> str:
    """repr of a value, cut to ``limit`` characters so a crafted file cannot flood an error message."""
    try:
        text = repr(value)
    except ValueError:  # an integer with more digits than Python converts to text
        return "<an integer too large to print>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
