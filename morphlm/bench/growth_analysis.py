"""The growth benchmark's analysis: FLOPs to reach the scratch run's final loss, saving and speedup per seed
and over seeds, the summary, the plot and the README table. Pure functions of the runs / results dict."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from .common import pyplot, save_plot
from .growth_config import BenchError
from .stats import mean_std


def flops_to_reach(curve: list[dict[str, float]], target: float) -> float | None:
    """FLOPs at which ``curve`` (points with ``flops`` and ``val_loss``, in training order) first reaches
    ``target``, interpolated linearly in FLOPs between the last point above and the first point at or below
    it; None when no point reaches it. A curve that starts at or below the target reaches it at its first
    point's FLOPs (e.g. the operator's cost)."""
    prev = None
    for p in curve:
        loss = p.get("val_loss")
        if loss is None or not math.isfinite(loss):
            prev = None
            continue
        if loss <= target:
            if prev is None:
                return float(p["flops"])
            f0, l0 = float(prev["flops"]), float(prev["val_loss"])
            f1 = float(p["flops"])
            frac = (l0 - target) / (l0 - loss) if l0 > loss else 1.0
            return f0 + frac * (f1 - f0)
        prev = p
    return None


def saving_numbers(c_method: float | None, c_scratch: float, source_flops: float = 0.0) -> dict[str, Any]:
    """saving/speedup without and with the source's cost; null when the target loss was never reached."""
    if c_method is None:
        return {"reached": False, "flops_to_target": None, "saving": None, "speedup": None,
                "flops_to_target_incl_source": None, "saving_incl_source": None, "speedup_incl_source": None}
    incl = c_method + source_flops
    return {"reached": True, "flops_to_target": c_method, "saving": 1.0 - c_method / c_scratch,
            "speedup": c_scratch / c_method if c_method > 0 else math.inf,
            "flops_to_target_incl_source": incl, "saving_incl_source": 1.0 - incl / c_scratch,
            "speedup_incl_source": c_scratch / incl if incl > 0 else math.inf}


def analyse(runs: dict[str, dict[int, dict]]) -> dict[str, Any]:
    """Per-arm statistics from raw runs ``{arm: {seed: result}}`` (each result has ``curve``,
    ``final_val_loss``, ``train_flops``, ``operator_flops``, ``source_flops``)."""
    if "scratch" not in runs or not runs["scratch"]:
        raise BenchError("no scratch run: every saving is measured against the scratch run of the same seed")
    per_seed: dict[str, dict[int, dict]] = {}
    for arm, by_seed in runs.items():
        for seed, res in by_seed.items():
            ref = runs["scratch"].get(seed)
            if ref is None:
                continue
            target, c_scratch = ref["final_val_loss"], ref["train_flops"]
            c = flops_to_reach(res["curve"], target)
            if arm == "scratch":
                c = c_scratch  # the papers' C_scratch: the whole scratch run
            per_seed.setdefault(arm, {})[seed] = {
                "target_loss": target, "c_scratch": c_scratch, "final_val_loss": res["final_val_loss"],
                **saving_numbers(c, c_scratch, res.get("source_flops", 0.0))}
    methods: dict[str, Any] = {}
    for arm, by_seed in per_seed.items():
        rows = list(by_seed.values())
        entry: dict[str, Any] = {"seeds": sorted(by_seed), "reached_seeds": sum(r["reached"] for r in rows)}
        entry["reached"] = entry["reached_seeds"] == len(rows)
        for key in ("saving", "saving_incl_source", "speedup", "speedup_incl_source", "final_val_loss",
                    "flops_to_target", "flops_to_target_incl_source"):
            ms = mean_std([r[key] for r in rows])
            entry[key], entry[f"{key}_std"] = ms["mean"], ms["std"]
        if not entry["reached"]:  # an arm that missed the target in some seed has no mean saving
            for key in ("saving", "saving_incl_source", "speedup", "speedup_incl_source", "flops_to_target",
                        "flops_to_target_incl_source"):
                entry[key] = entry[f"{key}_std"] = None
        entry["per_seed"] = {str(k): v for k, v in sorted(by_seed.items())}
        methods[arm] = entry
    return methods


def summarise(methods: dict[str, Any], seeds: list[int], corpus: str) -> dict[str, Any]:
    """The top-level ``summary``: the best growth arm by mean saving (source cost excluded)."""
    cands = {k: v for k, v in methods.items() if k != "scratch" and v.get("reached") and v.get("saving") is not None}
    best = max(cands, key=lambda k: cands[k]["saving"]) if cands else None
    return {"best_method": best,
            "best_saving": cands[best]["saving"] if best else None,
            "best_saving_std": cands[best]["saving_std"] if best else None,
            "best_saving_incl_source": cands[best]["saving_incl_source"] if best else None,
            "best_speedup": cands[best]["speedup"] if best else None,
            "seeds": len(seeds), "corpus": corpus,
            "not_reached": sorted(k for k, v in methods.items() if k != "scratch" and not v.get("reached"))}


def mean_curve(by_seed: dict[str, dict], include_source: bool = False) -> tuple[list[float], list[float]]:
    """Mean (FLOPs, val loss) over seeds, point by point (every seed evaluates at the same steps)."""
    curves = [r["curve"] for r in by_seed.values()]
    n = min(len(c) for c in curves)
    xs, ys = [], []
    for i in range(n):
        extra = [r.get("source_flops", 0.0) if include_source else 0.0 for r in by_seed.values()]
        xs.append(statistics.fmean(c[i]["flops"] + e for c, e in zip(curves, extra)))
        ys.append(statistics.fmean(c[i]["val_loss"] for c in curves))
    return xs, ys


def plot_results(results: dict[str, Any], png: str | Path) -> Path:
    """Validation loss against cumulative FLOPs (mean over seeds) for every arm; scratch dashed; the scratch
    final loss as a horizontal line. Left: source cost excluded (the papers' convention); right: included."""
    plt = pyplot()

    runs = results["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), dpi=120, sharey=True)
    target = results["methods"]["scratch"]["final_val_loss"]
    for ax, incl in zip(axes, (False, True)):
        for arm, by_seed in runs.items():
            xs, ys = mean_curve(by_seed, include_source=incl)
            m = results["methods"].get(arm, {})
            sav = m.get("saving_incl_source" if incl else "saving")
            label = arm if arm == "scratch" else f"{arm} ({'n/r' if sav is None else f'{100 * sav:+.0f}%'})"
            ax.plot(xs, ys, "--" if arm == "scratch" else "-", lw=2.2 if arm == "scratch" else 1.3,
                    color="black" if arm == "scratch" else None, label=label, marker="." if len(xs) < 40 else None)
        ax.axhline(target, color="gray", lw=0.8, ls=":")
        ax.legend(fontsize=7, loc="upper right", title="saving vs scratch", title_fontsize=7)
        ax.set_xlabel("cumulative training FLOPs" + (" incl. source pretraining" if incl else " (operator incl.)"))
        ax.grid(alpha=0.3)
        ax.set_title("source cost included" if incl else "source cost excluded (papers' convention)", fontsize=10)
    axes[0].set_ylabel("validation loss (nats/token)")
    lo = min(min(r["final_val_loss"] for r in by.values()) for by in runs.values())
    starts = [r["initial_val_loss"] for arm, by in runs.items() if arm != "scratch" for r in by.values()]
    hi = max(starts) if starts else target + 1.0
    axes[0].set_ylim(lo - 0.1, max(hi, target) + 0.4)
    s = results["summary"]
    fig.suptitle(f"growth benchmark: {results['config']['target_config']['d_model']}d x "
                 f"{results['config']['target_config']['n_layers']}L target, {s['seeds']} seed(s), mean curves; "
                 f"dotted: scratch's final loss", fontsize=10)
    return save_plot(fig, png)


def _pct(v: float | None, sd: float | None = None) -> str:
    if v is None:
        return "not reached"
    return f"{100 * v:.1f}%" + (f" ± {100 * sd:.1f}" if sd else "")


def markdown_table(results: dict[str, Any]) -> str:
    """The README table: one row per arm, best saving first; losers and non-reaching arms included."""
    methods = results["methods"]
    arms = results.get("arms", {})
    order = sorted((k for k in methods if k != "scratch"),
                   key=lambda k: -(methods[k]["saving"] if methods[k]["saving"] is not None else -9))
    lines = ["| method | source | final val loss | FLOPs to scratch's final loss | saving | saving incl. source | speedup |",
             "|---|---|---:|---:|---:|---:|---:|"]
    sc = methods["scratch"]
    lines.append(f"| scratch | – | {sc['final_val_loss']:.3f} | {sc['flops_to_target']:.3g} | – | – | 1.00× |")
    for k in order:
        m = methods[k]
        src = arms.get(k, {}).get("source") or "–"
        ftt = f"{m['flops_to_target']:.3g}" if m["flops_to_target"] is not None else f"not reached ({m['reached_seeds']}/{len(m['seeds'])} seeds)"
        sp = f"{m['speedup']:.2f}×" if m["speedup"] is not None else "–"
        lines.append(f"| {k} | {src} | {m['final_val_loss']:.3f} ± {m['final_val_loss_std']:.3f} | {ftt} | "
                     f"{_pct(m['saving'], m['saving_std'])} | {_pct(m['saving_incl_source'], m['saving_incl_source_std'])} | {sp} |")
    s = results["summary"]
    lines.append("")
    lines.append(f"Best: **{s['best_method']}**, saving {_pct(s['best_saving'])} of scratch's FLOPs "
                 f"({_pct(s['best_saving_incl_source'])} counting the source's pretraining); {s['seeds']} seed(s), "
                 f"corpus {s['corpus']}.")
    return "\n".join(lines)
