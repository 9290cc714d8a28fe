"""The MoE benchmark's analysis (:mod:`morphlm.bench.moe`): statistics per arm over seeds, paired differences to
vanilla (at equal tokens and at vanilla's FLOPs budget), the ``summary`` with the issue's goals, the plot and the
README table. Pure functions of the run records / results dict."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .common import fmt as _f
from .common import pyplot, save_plot
from .stats import mean_std

LOAD_KEYS = ("moe_cv", "moe_max_vio", "moe_dead", "pool0_cv", "pool0_max_vio", "pool0_dead", "loss_aux")
# the goals of the issue (val losses in nats; negative differences = better than vanilla)
GOALS = {"unipool_beats_vanilla_by_0.02": "unipool_minus_vanilla <= -0.02",
         "reduced_pool_beats_vanilla": "reduced_pool_minus_vanilla < 0",
         "loopmoe_beats_vanilla": "loopmoe_minus_vanilla < 0",
         "loopmoe_beats_vanilla_at_equal_flops": "loopmoe_minus_vanilla_at_equal_flops < 0",
         "moe_beats_dense": "moe_minus_dense < 0",
         "loss_free_max_vio_below_aux": "loss_free_max_vio < aux_max_vio",
         "layer_at_least_hf_speed": "layer_speed_vs_hf >= 1.0",
         "simulator_mape_at_most_15": "simulator_mape <= 15"}


# ------------------------------------------------------------------------------------------- analysis
def loss_at_flops(curve: list[dict[str, float]], flops: float) -> float | None:
    """Validation loss of ``curve`` at ``flops`` cumulative training FLOPs, linear in FLOPs between the evaluations
    around it; None when the curve does not span ``flops``."""
    for a, b in zip(curve, curve[1:]):
        if a["flops"] <= flops <= b["flops"]:
            frac = (flops - a["flops"]) / (b["flops"] - a["flops"]) if b["flops"] > a["flops"] else 0.0
            return a["val_loss"] + frac * (b["val_loss"] - a["val_loss"])
    if curve and curve[-1]["flops"] == flops:
        return curve[-1]["val_loss"]
    return None


def analyse(runs: dict[str, dict[int, dict]]) -> dict[str, Any]:
    """Per-arm statistics over seeds from ``{arm: {seed: record}}``: final val loss mean ± std, load metrics,
    parameters, FLOPs per token (and relative to vanilla's), and the paired difference to vanilla."""
    van = runs.get("vanilla", {})
    van_fpt = next(iter(van.values()))["flops_per_token"] if van else None
    arms: dict[str, Any] = {}
    for arm, by_seed in runs.items():
        rows = [by_seed[s] for s in sorted(by_seed)]
        loss = mean_std([r["final_val_loss"] for r in rows])
        diffs = [r["final_val_loss"] - van[s]["final_val_loss"] for s, r in sorted(by_seed.items()) if s in van]
        diff = mean_std(diffs)
        # at vanilla's total training FLOPs (arms that spend more per token, e.g. LoopMoE's IterAdaLN, get there
        # earlier): paired per seed, None where the arm's curve does not span that budget
        at = mean_std([loss_at_flops(r["curve"], van[s]["train_flops"]) - van[s]["final_val_loss"]
                       if s in van and loss_at_flops(r["curve"], van[s]["train_flops"]) is not None else None
                       for s, r in sorted(by_seed.items())])
        load = {k: mean_std([r["load"].get(k) for r in rows]) for k in LOAD_KEYS}
        first = rows[0]
        arms[arm] = {
            "seeds": sorted(by_seed), "final_val_loss": loss["mean"], "final_val_loss_std": loss["std"],
            "minus_vanilla": diff["mean"], "minus_vanilla_std": diff["std"],
            "minus_vanilla_at_vanilla_flops": at["mean"], "minus_vanilla_at_vanilla_flops_std": at["std"],
            "total_params": first["total_params"], "active_params": first["active_params"],
            "flops_per_token": first["flops_per_token"],
            "flops_per_token_vs_vanilla": first["flops_per_token"] / van_fpt if van_fpt else None,
            "train_flops": first["train_flops"], "tokens": first["tokens"],
            "load": {k: v["mean"] for k, v in load.items() if v["mean"] is not None},
            "load_std": {k: v["std"] for k, v in load.items() if v["mean"] is not None},
            "tok_per_s": statistics.fmean(r["tok_per_s"] for r in rows), "precision": first.get("precision"),
            "per_seed": {str(s): r["final_val_loss"] for s, r in sorted(by_seed.items())}}
    return arms


def summarise(arms: dict[str, Any], seeds: list[int], layer: dict | None, sim: dict | None) -> dict[str, Any]:
    """The ``summary`` block: the issue's keys, their standard deviations over seeds and the goals (None where an
    arm or measurement is missing)."""
    def get(arm: str, key: str):
        return arms.get(arm, {}).get(key)

    dense, van = arms.get("dense"), arms.get("vanilla")
    moe_minus_dense = moe_minus_dense_std = None
    if dense and van:
        moe_minus_dense = -dense["minus_vanilla"] if dense["minus_vanilla"] is not None else None
        moe_minus_dense_std = dense["minus_vanilla_std"]
    lf = arms.get("loss-free", {}).get("load", {}).get("moe_max_vio")
    aux = (van or {}).get("load", {}).get("moe_max_vio")
    s = {"unipool_minus_vanilla": get("unipool", "minus_vanilla"),
         "reduced_pool_minus_vanilla": get("unipool-half", "minus_vanilla"),
         "loopmoe_minus_vanilla": get("loopmoe", "minus_vanilla"),
         "moe_minus_dense": moe_minus_dense,
         "loss_free_max_vio": lf, "aux_max_vio": aux,
         "layer_speed_vs_hf": layer.get("layer_speed_vs_hf") if layer else None,
         "simulator_mape": sim.get("mape") if sim else None,
         "seeds": len(seeds),
         # LoopMoE spends more FLOPs per token (IterAdaLN's W_mod): its loss at vanilla's FLOPs budget as well
         "loopmoe_minus_vanilla_at_equal_flops": get("loopmoe", "minus_vanilla_at_vanilla_flops"),
         "loopmoe_flops_per_token_vs_vanilla": get("loopmoe", "flops_per_token_vs_vanilla")}
    s["std"] = {"unipool_minus_vanilla": get("unipool", "minus_vanilla_std"),
                "reduced_pool_minus_vanilla": get("unipool-half", "minus_vanilla_std"),
                "loopmoe_minus_vanilla": get("loopmoe", "minus_vanilla_std"),
                "moe_minus_dense": moe_minus_dense_std,
                "loopmoe_minus_vanilla_at_equal_flops": get("loopmoe", "minus_vanilla_at_vanilla_flops_std")}

    def goal(name: str) -> bool | None:
        lhs, op, rhs = GOALS[name].split()
        a = s[lhs]
        b = s[rhs] if rhs in s else float(rhs)
        if a is None or b is None:
            return None
        return {"<=": a <= b, "<": a < b, ">=": a >= b}[op]

    s["goals"] = {name: goal(name) for name in GOALS}
    return s


def mean_curve(by_seed: dict[str, dict]) -> tuple[list[float], list[float], list[float]]:
    """Mean FLOPs, mean and std of the val loss over seeds, point by point (every seed evaluates at the same steps)."""
    curves = [r["curve"] for r in by_seed.values()]
    n = min(len(c) for c in curves)
    xs, ys, sd = [], [], []
    for i in range(n):
        vals = [c[i]["val_loss"] for c in curves]
        xs.append(statistics.fmean(c[i]["flops"] for c in curves))
        ys.append(statistics.fmean(vals))
        sd.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
    return xs, ys, sd


def plot_results(results: dict[str, Any], png: str | Path) -> Path:
    """Validation loss (held-out books) against cumulative training FLOPs, mean over seeds ± std band, per arm."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for arm, by_seed in results["runs"].items():
        xs, ys, sd = mean_curve(by_seed)
        m = results["arms"][arm]
        label = f"{arm}: {m['final_val_loss']:.3f}"
        if len(m["seeds"]) > 1:
            label += f" ± {m['final_val_loss_std']:.3f}"
        line, = ax.plot(xs, ys, "--" if arm == "dense" else "-", lw=2.0 if arm == "vanilla" else 1.3,
                        color="black" if arm == "vanilla" else None, label=label, marker=".")
        if any(sd):
            ax.fill_between(xs, [y - e for y, e in zip(ys, sd)], [y + e for y, e in zip(ys, sd)],
                            color=line.get_color(), alpha=0.12)
    finals = [m["final_val_loss"] for m in results["arms"].values()]
    starts = [r["curve"][0]["val_loss"] for by in results["runs"].values() for r in by.values()]
    ax.set_ylim(min(finals) - 0.15, min(max(starts), max(finals) + 1.5) + 0.05)
    ax.set_xlabel("cumulative training FLOPs (active parameters, train/flops.py)")
    ax.set_ylabel("validation loss on held-out books (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="final val loss (mean ± std over seeds)", title_fontsize=8)
    c = results["config"]
    ax.set_title(f"MoE benchmark: d={c['d_model']}, L={c['n_layers']}, ctx {c['seq_len']}, {c['steps']} steps × "
                 f"{c['batch_size'] * c['seq_len']} tokens, {results['summary']['seeds']} seed(s), "
                 f"{results.get('precision', '?')}", fontsize=9)
    return save_plot(fig, png)


def markdown_table(results: dict[str, Any]) -> str:
    """The README table: one row per arm (every arm, winners and losers), then the summary and goals."""
    lines = ["| arm | total params | active params | FLOPs/token vs vanilla | val loss | − vanilla | load CV | "
             "MaxVio | dead experts |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for arm, m in results["arms"].items():
        ld = m["load"]
        cv, vio, dead = (ld.get("pool0_cv", ld.get("moe_cv")), ld.get("pool0_max_vio", ld.get("moe_max_vio")),
                         ld.get("pool0_dead", ld.get("moe_dead")))
        diff = "–" if arm == "vanilla" or m["minus_vanilla"] is None else (
            f"{m['minus_vanilla']:+.3f}" + (f" ± {m['minus_vanilla_std']:.3f}" if len(m["seeds"]) > 1 else ""))
        lines.append(f"| {arm} | {m['total_params']:,} | {m['active_params']:,} | "
                     f"{_f(m['flops_per_token_vs_vanilla'], '.3f')}× | {m['final_val_loss']:.3f} ± "
                     f"{m['final_val_loss_std']:.3f} | {diff} | {_f(cv, '.2f')} | {_f(vio, '.2f')} | "
                     f"{_f(dead, '.1f')} |")
    s = results["summary"]
    lines += ["", "Summary (nats; negative = better than vanilla): " + ", ".join(
        f"{k} {_f(s[k], '+.3f') if isinstance(s[k], float) else s[k]}"
        for k in ("unipool_minus_vanilla", "reduced_pool_minus_vanilla", "loopmoe_minus_vanilla", "moe_minus_dense",
                  "loopmoe_minus_vanilla_at_equal_flops", "loss_free_max_vio", "aux_max_vio", "layer_speed_vs_hf",
                  "simulator_mape", "seeds")),
              "Goals: " + ", ".join(f"{k} {'–' if v is None else ('met' if v else 'missed')}"
                                    for k, v in s["goals"].items())]
    layer = results.get("layer")
    if layer:
        lines += ["", f"Layer (T={layer['shape']['tokens']}, d={layer['shape']['d_model']}, expert d_ff="
                      f"{layer['shape']['expert_d_ff']}, E={layer['shape']['experts']}, top-{layer['shape']['top_k']}, "
                      f"fwd+bwd, 1 thread; tokens/s):"]
        for dtype, by in layer["results"].items():
            lines.append(f"- {dtype}: " + ", ".join(f"{n} {r['tokens_per_s']:,.0f}" for n, r in by.items()))
    return "\n".join(lines)
