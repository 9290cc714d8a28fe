"""The loss the search ranks by: ``L(N, D) = E + A/N^α + B/D^β`` (Hoffmann et al. 2022, arXiv 2203.15556,
§3.3 eq. (2)), N the active parameters, D the training tokens, fitted to our own runs.

Records ``(params, tokens, loss)`` come from benchmark results (a ``scaling_records`` list in any results JSON;
``benchmarks/results/growth.json``: every from-scratch run's validation curve, tokens = FLOPs / FLOPs per token)
and from run folders (``metrics.jsonl`` lines with
``tokens`` and ``val_loss``; N counted from the folder's ``config.json``).

The fit (:func:`fit_scaling_law`): for fixed (α, β) the law is linear in (E, A, B), so a grid over (α, β) with a
non-negative least-squares solve of (E, A, B) at each point, refined on a finer grid around the best, minimises
the squared error of the loss (variable projection, as Czech et al. 2026, arXiv 2603.22339, propose for this fit;
Hoffmann et al. minimise a Huber loss of log-loss with L-BFGS from a grid of starts — with few, clean points the
plain least squares over an exhaustive exponent grid is the more defensible choice, a reconstruction). It
needs ≥ 2 distinct N, ≥ 2 distinct D and ≥ 8 points; otherwise :func:`scaling_law` says so and returns the
published Chinchilla constants (E 1.69, A 406.4, B 410.7, α 0.34, β 0.28; Hoffmann et al. 2022 §3.3, Approach
3), stated in the result.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .hardware import SimError

CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
MIN_POINTS = 8


@dataclass
class ScalingLaw:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    source: str  # "fitted to N records from ..." or "Chinchilla (Hoffmann et al. 2022) ..."
    n_points: int = 0
    rmse: float | None = None
    records_from: list[str] = field(default_factory=list)

    def loss(self, params: float, tokens: float) -> float:
        return self.E + self.A / params ** self.alpha + self.B / max(tokens, 1.0) ** self.beta

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _nnls3(X, y):
    """Non-negative least squares for 3 unknowns by trying every active set (exact, 8 small solves)."""
    import itertools

    import numpy as np

    best, best_err = np.zeros(3), float(np.sum(y ** 2))
    for r in range(1, 4):
        for cols in itertools.combinations(range(3), r):
            c, *_ = np.linalg.lstsq(X[:, cols], y, rcond=None)
            if (c < 0).any():
                continue
            full = np.zeros(3)
            full[list(cols)] = c
            err = float(np.sum((X @ full - y) ** 2))
            if err < best_err:
                best, best_err = full, err
    return best, best_err


def fit_scaling_law(records: Iterable[tuple[float, float, float]], source: str = "records") -> ScalingLaw:
    """Fit E, A, B, α, β to ``(params, tokens, loss)`` records (see the module docstring)."""
    import numpy as np

    pts = [(float(n), float(d), float(l)) for n, d, l in records
           if n > 0 and d > 0 and math.isfinite(l)]
    if len(pts) < 3:
        raise SimError(f"a scaling-law fit needs at least 3 (params, tokens, loss) records; got {len(pts)}")
    N = np.array([p[0] for p in pts])
    D = np.array([p[1] for p in pts])
    y = np.array([p[2] for p in pts])

    def solve(a: float, b: float):
        X = np.stack([np.ones_like(N), N ** -a, D ** -b], axis=1)
        # scale the columns so the solve is well conditioned
        s = np.maximum(np.abs(X).max(axis=0), 1e-300)
        c, err = _nnls3(X / s, y)
        return c / s, err

    best = (math.inf, 0.0, 0.0, None)
    for a in np.linspace(0.05, 1.0, 39):
        for b in np.linspace(0.05, 1.0, 39):
            c, err = solve(a, b)
            if err < best[0]:
                best = (err, a, b, c)
    _, a0, b0, _ = best
    for a in np.linspace(max(a0 - 0.03, 0.01), a0 + 0.03, 25):
        for b in np.linspace(max(b0 - 0.03, 0.01), b0 + 0.03, 25):
            c, err = solve(a, b)
            if err < best[0]:
                best = (err, a, b, c)
    err, a, b, c = best
    return ScalingLaw(E=float(c[0]), A=float(c[1]), B=float(c[2]), alpha=float(a), beta=float(b),
                      source=f"fitted to {len(pts)} (params, tokens, val loss) records from {source}",
                      n_points=len(pts), rmse=math.sqrt(err / len(pts)))


def records_from_results(path: str | Path) -> list[tuple[float, float, float]]:
    """(params, tokens, val_loss) records of a benchmark results JSON: its ``scaling_records`` list
    (``{"params", "tokens", "loss"}`` objects — the schema any benchmark can write for this fit; params = active
    parameters), and every from-scratch validation curve of a growth-style file (growth.json: the scratch arm's
    runs, N = target_parameters; grown arms are left out — their loss owes to a source model's training the
    tokens do not count). Step-0 points are skipped."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SimError(f"results {path} is not valid JSON: {exc}") from None
    out: list[tuple[float, float, float]] = []
    if isinstance(data, dict) and isinstance(data.get("scaling_records"), list):
        for i, rec in enumerate(data["scaling_records"]):
            try:
                out.append((float(rec["params"]), float(rec["tokens"]), float(rec["loss"])))
            except (KeyError, TypeError, ValueError):
                raise SimError(f"results {path}: scaling_records[{i}] needs numeric params, tokens and loss") from None
    cfg = data.get("config", {}) if isinstance(data, dict) else {}
    n_params, fpt = cfg.get("target_parameters"), cfg.get("target_flops_per_token")
    runs = data.get("runs", {}) if isinstance(data, dict) else {}
    if not (n_params and fpt and isinstance(runs, dict)):
        return out
    for arm, seeds in runs.items():
        if not isinstance(seeds, dict):
            continue
        for run in seeds.values():
            if not isinstance(run, dict) or run.get("kind") != "scratch":
                continue
            for point in run.get("curve", []):
                flops, loss = point.get("flops"), point.get("val_loss")
                if flops and loss is not None and point.get("step", 0) > 0:
                    out.append((float(n_params), float(flops) / float(fpt), float(loss)))
    return out


def records_from_run(run_dir: str | Path) -> list[tuple[float, float, float]]:
    """(params, tokens, val_loss) from a run folder's metrics.jsonl (lines with tokens and val_loss), N counted
    from its config.json."""
    import torch

    from ..model import ModelConfig, TransformerLM

    run_dir = Path(run_dir)
    metrics, config = run_dir / "metrics.jsonl", run_dir / "config.json"
    if not metrics.is_file() or not config.is_file():
        raise SimError(f"{run_dir}: a run folder needs metrics.jsonl and config.json; give a folder fit() wrote")
    cfg = ModelConfig.from_file(config)
    with torch.device("meta"):
        n_params = TransformerLM(cfg).num_parameters()
    out = []
    for line in metrics.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("val_loss") is not None and rec.get("tokens"):
            out.append((float(n_params), float(rec["tokens"]), float(rec["val_loss"])))
    return out


def scaling_law(results: Iterable[str | Path] = (), runs: Iterable[str | Path] = ()) -> ScalingLaw:
    """The law fitted to the records of ``results`` JSONs and ``runs`` folders, or Chinchilla's published constants
    when they are too few or too narrow (the returned ``source`` says which and why)."""
    records: list[tuple[float, float, float]] = []
    names: list[str] = []
    for path in results:
        got = records_from_results(path)
        if got:
            records += got
            names.append(str(path))
    for run in runs:
        got = records_from_run(run)
        if got:
            records += got
            names.append(str(run))
    sizes = {round(r[0]) for r in records}
    lengths = {round(r[1]) for r in records}
    if len(records) >= MIN_POINTS and len(sizes) >= 2 and len(lengths) >= 2:
        law = fit_scaling_law(records, source=", ".join(names))
        law.records_from = names
        return law
    why = (f"{len(records)} records, {len(sizes)} distinct model size(s), {len(lengths)} distinct token count(s) "
           f"from {names or 'no source'}; a fit needs >= {MIN_POINTS} records over >= 2 sizes and >= 2 token counts")
    return ScalingLaw(**CHINCHILLA, source=f"Chinchilla constants (Hoffmann et al. 2022, arXiv 2203.15556): {why}",
                      n_points=len(records), records_from=names)
