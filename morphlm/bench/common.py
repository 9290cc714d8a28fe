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


def write_results(path: Path, results: dict[str, Any],
                  plot: Callable[[dict[str, Any], Path], Path] | None = None) -> dict[str, Any]:
    """Write a benchmark's ``results`` to ``path``; with ``plot`` (a benchmark's ``plot_results``) also draw the
    plot next to it (``.png``), record its path as ``results["plot"]`` and write the JSON again. The JSON is on
    disk before the plot is drawn, so a plotting failure never loses the numbers."""
    write_json(path, results)
    if plot is not None:
        results["plot"] = str(plot(results, path.with_suffix(".png")))
        write_json(path, results)
    return results


def check_run_settings(cfg: Any, error: type[Exception], *, curve: bool = True) -> None:
    """The checks every LM benchmark config shares, raising ``error`` naming the fix: ``profile`` is full, quick
    or test; at least one seed; ``precision`` auto, fp32 or bf16; with ``curve`` also ``steps >= 2`` and
    ``1 <= eval_every <= steps``."""
    if cfg.profile not in ("full", "quick", "test"):
        raise error(f"profile={cfg.profile!r}: choose full, quick or test")
    if curve and (cfg.steps < 2 or not 1 <= cfg.eval_every <= cfg.steps):
        raise error(f"steps={cfg.steps}, eval_every={cfg.eval_every}: need steps >= 2 and "
                    f"1 <= eval_every <= steps so the validation curve has points")
    if not cfg.seeds:
        raise error("no seeds: pass --seeds N with N >= 1")
    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise error(f"precision={cfg.precision!r}: choose auto, fp32 or bf16")


def prepare_store(cfg: Any, show_progress: bool = True):
    """(tokenizer, token store) of a benchmark's corpus from its config (``corpus``, ``vocab_size``,
    ``max_bytes``, ``val_fraction``): :func:`morphlm.data.prepare_lm_store`, split by whole documents (one per
    book), seed 0 — built once by the parent, opened from the cache by the workers."""
    from ..data import prepare_lm_store

    return prepare_lm_store(cfg.corpus, cfg.vocab_size, max_bytes=cfg.max_bytes, val_fraction=cfg.val_fraction,
                            seed=0, show_progress=show_progress)


STORE_KEYS = ("n_train_docs", "n_val_docs", "n_train_tokens", "n_val_tokens", "split_mode")


def store_meta(store: Any, *extra: str) -> dict[str, Any]:
    """The split's sizes from a token store's metadata (:data:`STORE_KEYS` and ``extra``), for a results file's
    ``data`` block."""
    return {k: store.meta.get(k) for k in STORE_KEYS + extra}



def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display): where every benchmark plot starts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_plot(fig: Any, png: str | os.PathLike, **savefig_kw: Any) -> Path:
    """Write ``fig`` to ``png`` (:func:`morphlm.train.metrics.save_figure`: laid out, folder created) and close it,
    also when writing fails; returns the path."""
    from ..train.metrics import save_figure

    try:
        return save_figure(fig, png, **savefig_kw)
    finally:
        pyplot().close(fig)


def fmt(value: float | None, spec: str = ".3f") -> str:
    """``value`` formatted by ``spec`` for a README table; a dash for a missing value."""
    return "–" if value is None else format(value, spec)


def provenance_note(results: dict[str, Any]) -> str:
    """The end of a README table's note: "<cpu>, torch <version>, commit <10 digits>." from a results file's
    provenance block (:func:`metadata`); the CPU is left out when unknown."""
    machine = results.get("machine")
    cpu = machine.get("cpu") if isinstance(machine, dict) else None
    return (f"{cpu + ', ' if cpu else ''}torch {results.get('torch', '?')}, "
            f"commit {str(results.get('commit', '?'))[:10]}.")
