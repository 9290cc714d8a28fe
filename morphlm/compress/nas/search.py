"""Architecture search under a latency bound: random and evolutionary search, confirmation by measurement,
and the hand-designed baseline."""

from __future__ import annotations

import random
from typing import Any, Callable, Mapping, Sequence

from ..errors import CompressionError
from .latency_model import LatencyPredictor
from .space import Arch, SearchSpace


# ---------------------------------------------------------------------------- search
def _feasible(space: SearchSpace, predictor: LatencyPredictor, max_latency_ms: float,
              min_latency_ms: float | None) -> tuple[list[Arch], dict[Arch, float]]:
    cands = space.candidates()
    pred = dict(zip(cands, predictor.predict_many(cands)))
    ok = [a for a in cands if pred[a] <= max_latency_ms and (min_latency_ms is None or pred[a] >= min_latency_ms)]
    if not ok:
        fastest = min(pred.values())
        raise CompressionError(
            f"no architecture satisfies the latency constraint: the fastest candidate is predicted at "
            f"{fastest:.3g} ms > max_latency_ms={max_latency_ms:g}"
            + (f" (or the window's lower bound {min_latency_ms:g} ms excludes the rest)" if min_latency_ms else "")
            + f"; raise --max-latency-ms to at least {fastest:.3g} or shrink the space's smallest sizes")
    return ok, pred


def _record(history: list, arch: Arch, fitness: float, pred_ms: float, origin: str) -> None:
    history.append({"eval": len(history), "arch": arch.to_dict(), "fitness": float(fitness),
                    "pred_ms": float(pred_ms), "origin": origin})


def _result(history: list) -> dict[str, Any]:
    best = max(history, key=lambda h: (h["fitness"], -h["eval"]))
    return {"best_arch": Arch.from_dict(best["arch"]), "best_fitness": best["fitness"], "history": history,
            "n_evals": len(history)}


def random_search(space: SearchSpace, fitness_fn: Callable[[Arch], float], predictor: LatencyPredictor,
                  max_latency_ms: float, n_evals: int, seed: int = 0, *, min_latency_ms: float | None = None,
                  progress: bool = False) -> dict[str, Any]:
    """``n_evals`` distinct feasible candidates drawn uniformly; returns dict(best_arch, best_fitness, history,
    n_evals) (best_arch is an :class:`Arch`; history entries hold arch dicts, fitness, predicted ms)."""
    if n_evals < 1:
        raise CompressionError(f"n_evals={n_evals} must be >= 1")
    ok, pred = _feasible(space, predictor, max_latency_ms, min_latency_ms)
    rng = random.Random(seed)
    picks = rng.sample(ok, min(n_evals, len(ok)))
    history: list = []
    for arch in _bar(picks, progress, "random search"):
        _record(history, arch, fitness_fn(arch), pred[arch], "random")
    return _result(history)


def _bar(it, progress: bool, desc: str):
    if not progress:
        return it
    from ...progress import progress_bar

    return progress_bar(it, desc=desc, unit="eval")


def _mutate(arch: Arch, space: SearchSpace, rng: random.Random) -> Arch:
    Ls, ds, hs, fs = space.layer_choices, space.hidden_choices, list(space.heads), space.ffn_choices

    def shift(vals: list[int], v: int, steps: Sequence[int]) -> int:
        i = min(range(len(vals)), key=lambda k: abs(vals[k] - v)) + rng.choice(steps) * rng.choice((-1, 1))
        return vals[min(max(i, 0), len(vals) - 1)]

    L, d, h, f = arch.n_layers, arch.d_model, arch.n_heads, arch.d_ff
    if rng.random() < 0.25:
        L = shift(Ls, L, (1,))
    if rng.random() < 0.5:
        d = shift(ds, d, (1,))
    if rng.random() < 0.5:
        f = shift(fs, f, (1, 2))
    if rng.random() < 0.25:
        h = shift(hs, h, (1, 2))
    return Arch(L, d, h, f)


def evolutionary_search(space: SearchSpace, fitness_fn: Callable[[Arch], float], predictor: LatencyPredictor,
                        max_latency_ms: float, n_evals: int, seed: int = 0, *, population: int | None = None,
                        p_random: float = 0.5, min_latency_ms: float | None = None,
                        progress: bool = False) -> dict[str, Any]:
    """AutoTinyBERT's evolved search (module docstring) with exactly ``n_evals`` fitness evaluations
    (bounded by the number of feasible candidates); same return as :func:`random_search`."""
    if n_evals < 1:
        raise CompressionError(f"n_evals={n_evals} must be >= 1")
    ok, pred = _feasible(space, predictor, max_latency_ms, min_latency_ms)
    feasible = set(ok)
    budget = min(n_evals, len(ok))
    pop_size = population or max(2, min(25, budget // 4))
    rng = random.Random(seed)
    seen: set[Arch] = set()
    history: list = []
    fit_of: dict[Arch, float] = {}

    def fresh() -> Arch:
        while True:  # terminates: fewer than len(ok) archs have been seen while budget remains
            a = ok[rng.randrange(len(ok))]
            if a not in seen:
                return a

    bar = _bar(range(budget), progress, "evolutionary search")
    for _ in bar:
        origin = "random"
        if len(history) < pop_size or rng.random() < p_random:
            child = fresh()
        else:
            popn = sorted(fit_of, key=lambda a: fit_of[a], reverse=True)[:pop_size]
            lo = min(fit_of[a] for a in popn)
            weights = [fit_of[a] - lo for a in popn]
            if sum(weights) <= 0:
                weights = [1.0] * len(popn)
            parent = rng.choices(popn, weights=weights)[0]
            child = None
            for _ in range(100):
                cand = _mutate(parent, space, rng)
                if cand in feasible and cand not in seen:
                    child, origin = cand, "mutation"
                    break
            if child is None:
                child = fresh()
        seen.add(child)
        fit_of[child] = float(fitness_fn(child))
        _record(history, child, fit_of[child], pred[child], origin)
    return _result(history)


def confirm_by_measurement(result: Mapping[str, Any], measure_ms: Callable[[Arch], float], max_latency_ms: float,
                           *, min_latency_ms: float | None = None, top_k: int = 5) -> dict[str, Any]:
    """Re-check a search's pick against MEASURED latency: the ``top_k`` fittest evaluated candidates are
    timed with ``measure_ms`` and the fittest whose measured latency lies in [min_latency_ms, max_latency_ms]
    becomes ``best_arch`` (ties: earlier evaluation). When none does, the search's own pick stays, flagged.

    Reconstruction: AutoTinyBERT trusts its predictor's window; with a predictor a few tens of percent off
    (small models, a shared machine) the pick can land far from the target latency, which defeats an
    equal-latency comparison. Timing a handful of finalists costs no fitness evaluations, so "equal
    evaluations" between searches still holds. Returns a copy of ``result`` with ``confirmed`` details."""
    if top_k < 1:
        raise CompressionError(f"top_k={top_k} must be >= 1")
    hist = sorted(result["history"], key=lambda h: (-h["fitness"], h["eval"]))[:top_k]
    checked = []
    for h in hist:
        arch = Arch.from_dict(h["arch"])
        ms = float(measure_ms(arch))
        ok = ms <= max_latency_ms and (min_latency_ms is None or ms >= min_latency_ms)
        checked.append({"arch": h["arch"], "fitness": h["fitness"], "pred_ms": h.get("pred_ms"),
                        "measured_ms": ms, "in_window": ok})
    inside = [c for c in checked if c["in_window"]]
    out = dict(result)
    out["search_best_arch"], out["search_best_fitness"] = result["best_arch"], result["best_fitness"]
    if inside:
        out["best_arch"], out["best_fitness"] = Arch.from_dict(inside[0]["arch"]), inside[0]["fitness"]
    out["confirmed"] = {"top_k": top_k, "window_ms": [min_latency_ms, max_latency_ms], "checked": checked,
                        "in_window": bool(inside)}
    return out


def hand_designed_arch(space: SearchSpace, predictor: LatencyPredictor, target_ms: float, *,
                       n_layers: int | None = None, n_heads: int | None = None, ffn_ratio: float = 4.0) -> Arch:
    """A conventional shape at a latency: depth ``n_layers`` (default the space's max), ``n_heads`` (default the
    most heads valid for each hidden size), d_ff the choice nearest ``ffn_ratio``·d, and the hidden size whose
    predicted latency is closest to ``target_ms``. Measure it (:func:`measure_arch_latencies`) before comparing."""
    L = n_layers or space.layer_choices[-1]
    opts = [a for a in space.candidates() if a.n_layers == L and (n_heads is None or a.n_heads == n_heads)]
    if not opts:
        raise CompressionError(f"no candidate with n_layers={L}" + (f", n_heads={n_heads}" if n_heads else "")
                               + " in the search space")
    heads = {}
    for a in opts:
        heads[a.d_model] = max(heads.get(a.d_model, 0), a.n_heads)
    pick: dict[int, Arch] = {}
    for a in opts:
        if a.n_heads != heads[a.d_model]:
            continue
        cur = pick.get(a.d_model)
        if cur is None or abs(a.d_ff - ffn_ratio * a.d_model) < abs(cur.d_ff - ffn_ratio * a.d_model):
            pick[a.d_model] = a
    pool = sorted(pick.values())
    preds = predictor.predict_many(pool)
    return min(zip(pool, preds), key=lambda t: (abs(t[1] - target_ms), t[0]))[0]
