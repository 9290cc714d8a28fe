"""What every benchmark result carries besides its numbers, and how it is written.

Every benchmark (``morphlm/bench/*`` behind ``morphlm bench ...``, and the scripts under ``benchmarks/``) builds
the provenance block with :func:`metadata` (:mod:`morphlm.provenance`: machine, library versions, commit, time)
and writes its JSON with :func:`write_json` (atomic, so a run killed mid-write never leaves half a file behind).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

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




def write_json(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON atomically (morphlm.io.write_json), non-finite floats as null."""
    return _write_json_atomic(path, json_safe(data), indent=2, sort_keys=False)
