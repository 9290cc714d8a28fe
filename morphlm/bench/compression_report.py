"""The compression benchmark's report: per-arm aggregation, the top-level ``summary`` with the issue's goals,
and the README table. Pure functions of the results dict (no torch), split from
:mod:`morphlm.bench.compression`, which re-exports them."""

from __future__ import annotations

import statistics
from typing import Any

from .stats import mean_std

# The benchmark's goals (checked in the summary; reported whether met or not): TinyBERT's 96.8% retention at
# 7.5x fewer parameters and 9.4x lower latency (Jiao et al. 2020, arXiv 1909.10351, abstract), TernaryBERT's
# 14.9x smaller model within 1 point (Zhang et al. 2020, arXiv 2009.12812, abstract), ETD's 70% compute saving
# (Chen et al., ICANN 2021, arXiv 2104.11928).
GOALS = {"student_retention": 0.968, "student_param_ratio": 7.5, "student_latency_speedup": 9.4,
         "ternary_size_ratio": 14.9, "ternary_acc_drop_max": 1.0, "etd_compute_saving": 0.70}


TINYBERT_RECIPE_ARMS = ("tinybert", "tinybert_tl", "tinybert_etd")

_NUMERIC_KEYS = ("dev_acc", "flops", "steps", "compute_saving", "steps_to_reference_acc", "acc_drop_points",
                 "size_ratio", "best_minus_uniform", "searched_minus_hand")


def aggregate_arm(runs: list[dict]) -> dict:
    """Per-seed runs -> mean ± std of their numeric headline fields (:func:`morphlm.bench.stats.mean_std`)."""
    agg: dict[str, Any] = {}
    for key in _NUMERIC_KEYS:
        vals = [r.get(key) for r in runs if isinstance(r.get(key), (int, float))]
        if vals:
            agg[key] = mean_std(vals)
    return agg


def _mean(arms: dict, arm: str, key: str = "dev_acc") -> float | None:
    a = arms.get(arm) or {}
    return ((a.get("aggregate") or {}).get(key) or {}).get("mean")


def compute_summary(arms: dict, teacher: dict) -> dict:
    """The top-level summary (the goals above) from the per-arm detail (None where an arm is missing)."""
    t_acc, t_params, t_lat = teacher.get("dev_acc"), teacher.get("params"), (teacher.get("latency") or {}).get(
        "b1_median_ms")
    # the headline student: the TinyBERT-recipe arm (task distillation, intermediate + prediction stages) with
    # the best mean dev accuracy over its three initialisations; without any, the KD / scratch baseline
    recipe = [a for a in TINYBERT_RECIPE_ARMS if _mean(arms, a) is not None]
    student_arm = max(recipe, key=lambda a: _mean(arms, a)) if recipe else next(
        (a for a in ("kd", "scratch") if _mean(arms, a) is not None), None)
    s: dict[str, Any] = {"teacher": teacher.get("name") or teacher.get("kind"), "student_arm": student_arm,
                         "student_arm_rule": "best mean dev accuracy of the TinyBERT-recipe arms "
                                             f"({', '.join(TINYBERT_RECIPE_ARMS)})",
                         "student_retention": None, "student_param_ratio": None,
                         "student_latency_speedup": None, "ternary_size_ratio": None, "ternary_acc_drop": None,
                         "etd_compute_saving": None}
    if t_acc:
        s["retention_by_arm"] = {a: _mean(arms, a) / t_acc for a in arms if _mean(arms, a) is not None}
    if student_arm is not None:
        a = arms[student_arm]
        runs = a.get("runs") or []
        acc = _mean(arms, student_arm)
        if t_acc:
            s["student_retention"] = acc / t_acc
        params = runs[0].get("params") if runs else None
        lat = (runs[0].get("latency") or {}).get("b1_median_ms") if runs else None
        if t_params and params:
            s["student_param_ratio"] = t_params / params
        if t_lat and lat:
            s["student_latency_speedup"] = t_lat / lat
    s["ternary_size_ratio"] = _mean(arms, "ternary", "size_ratio")
    s["ternary_acc_drop"] = _mean(arms, "ternary", "acc_drop_points")
    t_runs = (arms.get("ternary") or {}).get("runs") or []
    for variant in ("fp16_rest", "base3"):  # beside the headline (2-bit, float32 scales and rest: the protocol's)
        runs = [r[variant] for r in t_runs if r.get(variant)]
        if runs:
            s[f"ternary_size_ratio_{variant}"] = statistics.fmean(f["size_ratio"] for f in runs)
            s[f"ternary_acc_drop_{variant}"] = statistics.fmean(f["acc_drop_points"] for f in runs)
    ref = next((r["reference_shape"] for r in t_runs if r.get("reference_shape")), None)
    if ref:
        s["ternary_size_ratio_at_reference_shape"] = ref["size_ratio_fp32_rest"]
        if "size_ratio_base3_fp32_rest" in ref:
            s["ternary_size_ratio_base3_at_reference_shape"] = ref["size_ratio_base3_fp32_rest"]
        s["ternary_reference_shape"] = ref["shape"]
    for arm in ("etd_impt", "etd_rand"):  # the headline: ETD-Impt (the paper's best), else ETD-Rand
        runs = (arms.get(arm) or {}).get("runs") or []
        if not runs:
            continue
        measured = [r["compute_saving"] for r in runs if isinstance(r.get("compute_saving"), (int, float))]
        s["etd_compute_saving"] = statistics.fmean(measured) if measured else None
        s["etd_compute_saving_arm"] = arm
        s["etd_compute_saving_status"] = (
            f"measured in {len(measured)} of {len(runs)} seeds" if measured else
            "not measurable: the random-init reference never left the majority class in any seed")
        break
    s["layermap_best_minus_uniform"] = _mean(arms, "layermap", "best_minus_uniform")
    s["autotinybert_searched_minus_hand"] = _mean(arms, "autotinybert", "searched_minus_hand")
    s["goals"] = goals_met(s)
    return s


def goals_met(s: dict) -> dict:
    def ge(v, g):
        return None if v is None else bool(v >= g)

    return {
        "student_retention>=0.968": ge(s.get("student_retention"), GOALS["student_retention"]),
        "student_param_ratio>=7.5": ge(s.get("student_param_ratio"), GOALS["student_param_ratio"]),
        "student_latency_speedup>=9.4": ge(s.get("student_latency_speedup"), GOALS["student_latency_speedup"]),
        "ternary_size_ratio>=14.9": ge(s.get("ternary_size_ratio"), GOALS["ternary_size_ratio"]),
        "ternary_acc_drop<=1.0": None if s.get("ternary_acc_drop") is None
        else bool(s["ternary_acc_drop"] <= GOALS["ternary_acc_drop_max"]),
        "etd_compute_saving>=0.70": ge(s.get("etd_compute_saving"), GOALS["etd_compute_saving"]),
        "layermap_searched>=uniform": ge(s.get("layermap_best_minus_uniform"), 0.0),
        "autotinybert_searched>=hand": ge(s.get("autotinybert_searched_minus_hand"), 0.0),
    }


# ============================================================================================ table
def _fmt(ms: dict | None, scale: float = 100.0, digits: int = 1) -> str:
    if not ms or ms.get("mean") is None:
        return "—"
    if ms.get("n", 1) > 1:
        return f"{ms['mean'] * scale:.{digits}f} ± {ms['std'] * scale:.{digits}f}"
    return f"{ms['mean'] * scale:.{digits}f}"


def markdown_table(result: dict) -> str:
    """The README table: one row per arm (dev accuracy mean ± std over seeds, params, latency, notes)."""
    t = result.get("teacher") or {}
    lines = ["| arm | dev acc (%) | params | latency b1 (ms) | notes |", "|---|---:|---:|---:|---|"]
    tl = (t.get("latency") or {}).get("b1_median_ms")
    lines.append(f"| teacher ({t.get('kind', '?')}) | {t.get('dev_acc', 0) * 100:.1f} | {t.get('params', 0):,} | "
                 f"{tl:.2f} | {t.get('note', '')} |" if tl else "| teacher | — | — | — | |")
    for name, a in (result.get("arms") or {}).items():
        status = a.get("status")
        if status != "ok":
            lines.append(f"| {name} | — | — | — | {status}: {a.get('reason') or a.get('error', '')} |")
            continue
        runs = a.get("runs") or [{}]
        r0 = runs[0]
        lat = (r0.get("latency") or {}).get("b1_median_ms")
        agg = a.get("aggregate") or {}
        note = a.get("note", "")
        lines.append(f"| {name} | {_fmt(agg.get('dev_acc'))} | {r0.get('params', 0):,} | "
                     f"{lat:.2f} | {note} |" if lat else
                     f"| {name} | {_fmt(agg.get('dev_acc'))} | {r0.get('params', 0):,} | — | {note} |")
    s = result.get("summary") or {}
    lines.append("")
    lines.append("| summary | value | goal | met |")
    lines.append("|---|---:|---:|---|")
    goals = s.get("goals") or {}
    rows = [("student_retention", "≥ 0.968", "student_retention>=0.968"),
            ("student_param_ratio", "≥ 7.5", "student_param_ratio>=7.5"),
            ("student_latency_speedup", "≥ 9.4", "student_latency_speedup>=9.4"),
            ("ternary_size_ratio", "≥ 14.9", "ternary_size_ratio>=14.9"),
            ("ternary_acc_drop", "≤ 1.0", "ternary_acc_drop<=1.0"),
            ("etd_compute_saving", "≥ 0.70", "etd_compute_saving>=0.70"),
            ("layermap_best_minus_uniform", "≥ 0", "layermap_searched>=uniform"),
            ("autotinybert_searched_minus_hand", "≥ 0", "autotinybert_searched>=hand")]
    # informative variants of a goal's quantity, listed under it, judged by the same goal (shown where measured)
    variants = {"ternary_size_ratio": ("ternary_size_ratio_fp16_rest", "ternary_size_ratio_at_reference_shape",
                                       "ternary_size_ratio_base3", "ternary_size_ratio_base3_at_reference_shape"),
                "ternary_acc_drop": ("ternary_acc_drop_fp16_rest", "ternary_acc_drop_base3")}

    def row(key: str, v, goal: str, met) -> str:
        return (f"| {key} | {'—' if v is None else f'{v:.3f}'} | {goal} | "
                f"{'n/a' if met is None else ('yes' if met else 'no')} |")

    for key, goal, gkey in rows:
        lines.append(row(key, s.get(key), goal, goals.get(gkey)))
        for vkey in variants.get(key, ()):
            if s.get(vkey) is not None:
                lines.append(row(vkey, s[vkey], f"({goal})", goals_met({**s, key: s[vkey]})[gkey]))
    return "\n".join(lines)


# ============================================================================================ plot
def _arm_point(run: dict, params: int | None) -> tuple[float | None, float | None, bool]:
    """(latency b1 ms, size bytes, measured size?) of one arm run: a packed/int8 arm's bytes on disk, else the
    float32 weights (4 bytes per parameter)."""
    lat = (run.get("latency") or {}).get("b1_median_ms")
    size = run.get("packed_bytes", run.get("bytes"))
    if isinstance(size, (int, float)):
        return lat, float(size), True
    return lat, (4.0 * params if params else None), False


def plot_tradeoffs(result: dict, out_png) -> "Path | None":
    """Dev accuracy against latency (batch 1, median ms) and against size (bytes) for the teacher and every
    arm that reports them (mean accuracy over seeds; latency and size of the first seed), two panels in one
    PNG. Returns the path, or None when no arm has accuracy and latency to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..train.metrics import save_figure

    points = []  # (label, acc, latency, size, measured)
    t = result.get("teacher") or {}
    if isinstance(t.get("dev_acc"), (int, float)):
        points.append(("teacher", t["dev_acc"], (t.get("latency") or {}).get("b1_median_ms"),
                       t.get("fp32_bytes") or (4.0 * t["params"] if t.get("params") else None), True))
    for name, a in (result.get("arms") or {}).items():
        if a.get("status") != "ok" or not a.get("runs"):
            continue
        acc = ((a.get("aggregate") or {}).get("dev_acc") or {}).get("mean")
        if acc is None:
            continue
        r0 = a["runs"][0]
        lat, size, measured = _arm_point(r0, r0.get("params"))
        points.append((name, acc, lat, size, measured))
    if not any(p[2] is not None for p in points):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    try:
        for ax, idx, xlabel in ((axes[0], 2, "latency, batch 1 (median ms, 1 thread)"),
                                (axes[1], 3, "size (bytes: on disk for packed/int8 arms, 4 × params otherwise)")):
            for label, acc, *xs in points:
                xv, measured = xs[idx - 2], xs[2]
                if xv is None:
                    continue
                marker = "*" if label == "teacher" else ("s" if idx == 3 and measured else "o")
                ax.scatter([xv], [acc * 100.0], marker=marker, s=60 if label == "teacher" else 30)
                ax.annotate(label, (xv, acc * 100.0), textcoords="offset points", xytext=(4, 3), fontsize=7)
            ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("dev accuracy (%)")
            ax.grid(alpha=0.3)
        task = (result.get("task") or {}).get("name", "")
        fig.suptitle(f"compression benchmark ({result.get('profile', '?')} profile{', ' + task if task else ''})")
        return save_figure(fig, out_png)
    finally:
        plt.close(fig)


def mean_curve(runs: list[dict]) -> list[tuple[int, float]]:
    """Dev accuracy against task steps, averaged over the seeds that logged each step."""
    by_step: dict[int, list[float]] = {}
    for r in runs:
        for step, acc in r.get("curve") or []:
            by_step.setdefault(int(step), []).append(float(acc))
    return [(step, statistics.fmean(v)) for step, v in sorted(by_step.items())]


def plot_curves(result: dict, out_png) -> "Path | None":
    """Dev accuracy against task-training steps, one line per student arm (mean over seeds; a two-stage arm's
    line starts where its prediction stage starts), the teacher and the majority-class rate as horizontal
    lines, and the ETD reference (random init) dashed. Returns the path, or None when no arm has a curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..train.metrics import save_figure

    lines = []
    for name, a in (result.get("arms") or {}).items():
        runs = [r for r in (a.get("runs") or []) if r.get("curve")]
        if a.get("status") == "ok" and runs:
            lines.append((name, mean_curve(runs), "-"))
        refs = [r["reference"] for r in (a.get("runs") or []) if (r.get("reference") or {}).get("curve")]
        if name == "etd_impt" and refs:
            lines.append(("etd reference (random init)", mean_curve(refs), "--"))
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=120)
    try:
        for label, pts, style in lines:
            ax.plot([p[0] for p in pts], [p[1] * 100.0 for p in pts], style, label=label, lw=1.3)
        t = result.get("teacher") or {}
        if isinstance(t.get("dev_acc"), (int, float)):
            ax.axhline(t["dev_acc"] * 100.0, color="k", lw=1.0, label=f"teacher ({t.get('kind', '?')})")
        maj = t.get("majority_rate")
        if isinstance(maj, (int, float)):
            ax.axhline(maj * 100.0, color="grey", lw=0.8, ls=":", label="majority class")
        ax.set_xlabel("task-training steps (mean over seeds)")
        ax.set_ylabel("dev accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        task = (result.get("task") or {}).get("name", "")
        ax.set_title(f"compression benchmark: dev accuracy vs steps ({result.get('profile', '?')} profile"
                     f"{', ' + task if task else ''})", fontsize=9)
        return save_figure(fig, out_png)
    finally:
        plt.close(fig)
