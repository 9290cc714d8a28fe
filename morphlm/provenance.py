"""Provenance of a measured number: machine, library versions, commit and time — the block every result file
(benchmarks, search reports) carries beside its numbers.

The commit is ``git rev-parse HEAD`` with ``-dirty`` appended when the working tree differs from it:
modified tracked files *or* untracked, non-ignored files (a new module that is not committed yet still
changes what was measured, which ``git describe --dirty`` would not notice). Where the tree has no git
(e.g. a copy of the tree on a remote GPU machine) the caller's environment can name the commit in
``MORPHLM_COMMIT``; otherwise it is recorded as ``null``.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def _repo_root() -> Path:
    """The checkout this package runs from (editable install), else the working directory."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "benchmarks").is_dir() else Path.cwd()


ROOT = _repo_root()


def _git(*args: str, cwd: Path = ROOT) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit(root: Path = ROOT) -> str | None:
    """``HEAD``'s hash, ``-dirty`` when the tree has changes; ``$MORPHLM_COMMIT`` when there is no git."""
    head = _git("rev-parse", "HEAD", cwd=root)
    if head is None:
        return os.environ.get("MORPHLM_COMMIT") or None
    # results files are outputs, not code: rewriting them does not change what was measured
    status = _git("status", "--porcelain", "--", ".", ":(exclude)benchmarks/results", cwd=root)
    return f"{head}-dirty" if status else head


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                 timeout=5)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """CPUs this process may run on (respects taskset / container CPU sets), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)  # kB -> GiB
    except (OSError, ValueError, IndexError):
        pass
    return None


def gpu_info() -> dict[str, Any] | None:
    """Name, count, memory and compute capability of the visible CUDA devices, or None without CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": torch.cuda.get_device_name(0),
        "count": torch.cuda.device_count(),
        "memory_gib": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }


def machine_info() -> dict[str, Any]:
    gpu = gpu_info()
    return {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": memory_gib(),
        "gpu": gpu["name"] if gpu else None,
        "gpu_detail": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("torch", "transformers"):
        try:
            module = __import__(name)
            out[name] = getattr(module, "__version__", None)
        except ImportError:
            out[name] = None
    return out


def utc_timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def metadata() -> dict[str, Any]:
    """The block every result JSON carries at its top level (and per section when sections are merged)."""
    versions = library_versions()
    return {
        "machine": machine_info(),
        "torch": versions["torch"],
        "transformers": versions["transformers"],
        "commit": git_commit(),
        "timestamp": utc_timestamp(),
    }
