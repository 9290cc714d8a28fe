"""What every benchmark result carries besides its numbers, and how it is written.

Every benchmark (``morphlm/bench/*`` behind ``morphlm bench ...``, and the scripts under ``benchmarks/``) builds
the provenance block with :func:`metadata` (:mod:`morphlm.provenance`: machine, library versions, commit, time)
and writes its JSON with :func:`write_json` (atomic, so a run killed mid-write never leaves half a file behind).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from ..io import json_safe  # noqa: F401 (re-exported)
from ..io import write_json as _write_json_atomic
from ..provenance import (ROOT, cpu_model, git_commit, gpu_info, library_versions, machine_info,  # noqa: F401
                          memory_gib, metadata, usable_cores, utc_timestamp)

RESULTS_DIR = Path(os.environ.get("MORPHLM_RESULTS", ROOT / "benchmarks" / "results"))


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """A results file as a dict, or None when it is missing or unreadable (a fresh file is then started)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def config_hash(obj: Any) -> str:
    """16 hex digits of the SHA-256 of ``obj`` as sorted-key JSON: the fingerprint of a benchmark's settings that
    names its cached (arm, seed) results, so a changed setting never reuses a stale one."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def bench_work_dir(name: str) -> Path:
    """A benchmark's default cache folder: ``$MORPHLM_CACHE/<name>``, else ``~/.cache/morphlm/<name>``."""
    env = os.environ.get("MORPHLM_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "morphlm"
    return base / name


def results_file(stem: str, profile: str) -> Path:
    """``benchmarks/results/<stem>.json`` for the full profile, ``<stem>-<profile>.json`` for the small ones
    (quick, test); ``$MORPHLM_RESULTS`` (read at every call) moves the folder."""
    folder = Path(os.environ["MORPHLM_RESULTS"]) if os.environ.get("MORPHLM_RESULTS") else RESULTS_DIR
    return folder / (f"{stem}.json" if profile == "full" else f"{stem}-{profile}.json")


def results_table(path: str | os.PathLike, render: Callable[[dict[str, Any]], str], bench: str,
                  error: type[Exception] = ValueError) -> str:
    """``render`` (a benchmark's ``markdown_table``) of the results JSON at ``path``, for ``morphlm bench NAME
    --table``. A missing file raises FileNotFoundError, a file that is not this benchmark's results ``error``,
    each naming the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `morphlm bench {bench}` first (or pass --out FILE)")
    try:
        return render(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise error(f"{path} is not a `morphlm bench {bench}` results file ({type(exc).__name__}: {exc}); pass the "
                    f"JSON that `morphlm bench {bench}` wrote") from exc


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON atomically (morphlm.io.write_json), non-finite floats as null."""
    return _write_json_atomic(path, json_safe(data), indent=2, sort_keys=False)
