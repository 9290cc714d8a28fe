"""`make demo` / `morphlm demo`: the growth story in a few minutes on two CPU cores.

1. pretrain a small GPT on the embedded ``stdlib`` corpus (the Python standard library);
2. grow it to the target size with the best growth method — the ``best_method`` of
   benchmarks/results/growth.json when that file exists, else ``stack`` (StackBERT depth stacking, the
   winner of the benchmark's probes);
3. train the grown model and a scratch model of the same target size for EQUAL training FLOPs (the scratch
   run also gets the growth operator's FLOPs, if any), on the same batches in the same order;
4. print a table (validation loss, FLOPs, FLOPs to reach scratch's final loss, saving with and without the
   source's pretraining cost) and plot validation loss against cumulative FLOPs.

``steps`` is the total optimizer-step budget of the three runs (split equally: source, grown, scratch).
Every run is a normal checkpoint directory under ``out`` trained with ``resume="auto"``, so rerunning the
demo resumes an interrupted run and reuses finished ones.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

DEMO_TARGET = dict(d_model=128, n_layers=4, n_heads=4, vocab_size=2048, max_seq_len=128)
DEMO_DATA = dict(corpus="stdlib", max_bytes=3_000_000, seq_len=128, batch_size=16, eval_batches=6)
DEFAULT_METHOD = "stack"
SOURCES = {"half-depth": dict(n_layers=2), "half-width": dict(d_model=64, n_heads=2)}


def best_growth_method(results_json: str | Path | None = None) -> tuple[str, str]:
    """(method, where it came from): the benchmark's best growth-registry method, else the default."""
    from .bench.growth import ARMS, results_path, full_config
    from .grow.api import available_methods

    path = Path(results_json) if results_json is not None else results_path(full_config())
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return DEFAULT_METHOD, "default (no benchmark results found)"
    methods = data.get("methods") or {}
    grow_methods = set(available_methods())
    ranked = sorted((k for k, v in methods.items() if v.get("saving") is not None and k in ARMS
                     and ARMS[k].kind == "grow" and ARMS[k].method in grow_methods),
                    key=lambda k: -methods[k]["saving"])
    if not ranked:
        return DEFAULT_METHOD, f"default ({path.name} has no growth method that reached scratch's loss)"
    best = ranked[0]
    note = f"best growth operator in {path.name}"
    if data.get("summary", {}).get("best_method") not in (None, best):
        note += f" (overall best there: {data['summary']['best_method']}, a schedule)"
    return ARMS[best].method, note


def _cfg(overrides: dict[str, Any] | None = None):
    from .model.config import PRESETS, ModelConfig

    return ModelConfig.from_dict({**PRESETS["tiny"], **DEMO_TARGET, **(overrides or {}), "name": "demo"})


def _args(steps: int, out: Path, seed: int = 0):
    from .train.optim import TrainArgs

    return TrainArgs(out_dir=str(out), max_steps=steps, schedule_steps=steps, lr=2e-3, warmup_steps=max(steps // 25, 1),
                     eval_every=max(steps // 12, 1), save_every=max(steps // 4, 1), resume="auto", seed=seed,
                     progress=True, precision="fp32")


def _val_curve(run_dir: Path, start: dict | None = None) -> list[dict[str, float]]:
    from .train.metrics import read_metrics

    pts = [start] if start else []
    pts += [{"step": r["step"], "flops": r["flops"] + (start or {}).get("flops", 0.0), "val_loss": r["val_loss"]}
            for r in read_metrics(run_dir) if "val_loss" in r]
    return pts


def saving_caveat(grown: list[dict], scratch: list[dict]) -> str | None:
    """Why the demo's FLOPs saving is not a measurement at this run length, or None when it is one.

    The growth benchmark's rule (morphlm.bench.growth_config): a saving means something only when the
    source is clearly worse than scratch's final model. When the grown model reaches scratch's final loss
    before any training (the source alone sits there), "FLOPs to reach it" is the operator's cost and any
    function-preserving method saves ~100%; and while scratch's loss is still falling steeply at its end it
    has not reached a stable loss, so the target is an early point of a short run."""
    if not grown or len(scratch) < 2:
        return "too few evaluations to compare; run more --max-steps"
    target = scratch[-1]["val_loss"]
    if grown[0]["val_loss"] <= target:
        return (f"not measurable at this length: the grown model matched scratch's final loss ({target:.3f}) before "
                f"any training ({grown[0]['val_loss']:.3f}), so scratch never got past where the source already "
                f"was; rerun with more --max-steps (default 1500)")
    losses = [p["val_loss"] for p in scratch]
    quarter = losses[-max(len(losses) // 4, 2)]  # the loss a quarter of the run before the end
    total_drop = losses[0] - losses[-1]
    if total_drop > 0 and quarter - losses[-1] > 0.25 * total_drop:
        return (f"scratch had not reached a stable loss (its last quarter still took {quarter - losses[-1]:.3f} of "
                f"its {total_drop:.3f} drop), so its final loss is an early target; rerun with more --max-steps "
                f"(default 1500)")
    return None


def run_demo(out: str | Path = "runs/demo", steps: int = 1500, method: str | None = None) -> dict:
    """Run (or resume) the demo; a SIGINT/SIGTERM stops it at once (TrainingInterrupted) before anything is
    built on the cut run: the next stage never starts from a half-trained source."""
    from .train.loop import TrainingInterrupted

    try:
        return _run_demo(out, steps, method)
    except TrainingInterrupted as exc:
        exc.resume_hint = (f"rerun `morphlm demo --out {out} --max-steps {steps}`: it resumes the cut run and reuses "
                           f"the finished ones")
        raise


def _is_demo_folder(path: Path) -> bool:
    """A folder an earlier demo wrote (a rerun resumes it): only the demo's runs, init records, table and plot."""
    names = [p.name for p in path.iterdir() if p.name not in (".lock", ".staging")]
    return all(n in ("source", "scratch", "summary.json", "growth.png") or n.startswith("grown-") for n in names)


def _run_demo(out: str | Path, steps: int, method: str | None) -> dict:
    import torch

    from .bench.growth import ARMS, flops_to_reach, saving_numbers
    from .data import prepare_lm_store
    from .data.batches import LMBatches
    from .grow.api import fresh_target, grow_model
    from .train import checkpoint as ckpt
    from .train.loop import evaluate, fit, model_loss
    from .model import TransformerLM

    out = ckpt.claim_output_dir(out, "demo", resume=True, own=_is_demo_folder)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    n = max(steps // 3, 10)
    if method is None:
        method, why = best_growth_method()
    else:
        why = "chosen with --method"
    arm = next((a for a in ARMS.values() if a.kind == "grow" and a.method == method), None)
    src_kind = arm.source if arm is not None else "half-depth"
    src_cfg, tgt_cfg = _cfg(SOURCES[src_kind]), _cfg()
    tokenizer, store = prepare_lm_store(DEMO_DATA["corpus"], DEMO_TARGET["vocab_size"], max_bytes=DEMO_DATA["max_bytes"])
    bs, T, eb = DEMO_DATA["batch_size"], DEMO_DATA["seq_len"], DEMO_DATA["eval_batches"]
    target_data = LMBatches(store, bs, T, seed=0, eval_batches=eb)
    source_data = LMBatches(store, bs, T, seed=1, eval_batches=eb)  # the source sees its own batch stream
    tj = tokenizer.to_json_str()
    cpu = torch.device("cpu")

    # 1. the source
    src_dir = out / "source"
    typer.secho(f"[1/4] pretraining the source: a {src_cfg.n_layers}-layer, d={src_cfg.d_model} GPT "
                f"({TransformerLM(src_cfg).num_parameters():,} params) on the Python standard library, {n} steps ...",
                bold=True)
    torch.manual_seed(1)
    fit(TransformerLM(src_cfg), model_loss, source_data, _args(n, src_dir, seed=1), tokenizer_json=tj,
        lineage={"verb": "train", "preset": "demo source", "parents": []})
    source = ckpt.load_model(src_dir)
    source_flops = ckpt.total_flops(src_dir)
    source_loss = evaluate(source, model_loss, target_data.val_batches(), cpu, "fp32")["val_loss"]

    # 2. grow
    grown_dir = out / f"grown-{method}"
    init_file = out / f"grown-{method}.init.json"
    typer.secho(f"[2/4] growing it to {tgt_cfg.n_layers} layers, d={tgt_cfg.d_model} "
                f"({TransformerLM(tgt_cfg).num_parameters():,} params) with '{method}' [{why}] ...", bold=True)
    callbacks: list = []
    opts: dict[str, Any] = {}
    if method in ("ligo", "mango"):
        opts.update(data=LMBatches(store, bs, T, seed=2, eval_batches=eb), steps=max(n // 20, 5))
    if method == "msg":
        opts["ramp_steps"] = max(n // 10, 1)
    resuming = ckpt.has_trainer_state(grown_dir) and init_file.exists()  # fit reloads the saved weights
    if resuming and method in ("ligo", "mango"):
        model = fresh_target(tgt_cfg, 0)  # no need to refit the operator
    else:
        g = grow_model(source, tgt_cfg, method, seed=0, **opts)  # closed-form: cheap and deterministic
        model = g.model
        if g.masks is not None:  # MSG: the mask ramps from step 0 of this run (also when resuming)
            g.masks.start_step = 0
            if not resuming:
                from .grow.depth import carry_optimizer_state

                g.masks.optimizer_state = carry_optimizer_state(source, src_dir, model, g.masks.plan)
            callbacks.append(g.masks)
        if not resuming:
            init_file.write_text(json.dumps({
                "val_loss": evaluate(model, model_loss, target_data.val_batches(), cpu, "fp32")["val_loss"],
                "operator_flops": float(g.flops), "function_preserving": g.function_preserving}))
    init = json.loads(init_file.read_text())
    typer.echo(f"      source val loss {source_loss:.3f}; grown model before training {init['val_loss']:.3f} "
               f"(function-preserving: {init.get('function_preserving', '?')})")

    # 3. train grown and scratch for equal FLOPs
    typer.secho(f"[3/4] training the grown model and a scratch model of the same size for equal FLOPs "
                f"({n} steps each) ...", bold=True)
    fit(model, model_loss, target_data, _args(n, grown_dir), callbacks, tokenizer_json=tj,
        lineage={"verb": "train", "preset": f"demo grown by {method}", "parents": [
            ckpt.parent_record(src_dir, flops=source_flops)]})
    step_flops = _val_curve(grown_dir)[-1]["flops"] / n
    n_scratch = n + int(round(init["operator_flops"] / step_flops))  # the operator's FLOPs go to scratch too
    scratch_dir = out / "scratch"
    fit(fresh_target(tgt_cfg, 0), model_loss, target_data, _args(n_scratch, scratch_dir), tokenizer_json=tj,
        lineage={"verb": "train", "preset": "demo scratch", "parents": []})

    # 4. table and plot
    grown_curve = _val_curve(grown_dir, {"step": 0, "flops": init["operator_flops"], "val_loss": init["val_loss"]})
    scratch_curve = _val_curve(scratch_dir)
    c_scratch, target_loss = scratch_curve[-1]["flops"], scratch_curve[-1]["val_loss"]
    s = saving_numbers(flops_to_reach(grown_curve, target_loss), c_scratch, source_flops)
    rows = [("source (pretrained)", source_loss, source_flops, "–", "–", "–"),
            ("scratch", target_loss, c_scratch, f"{c_scratch:.3g}", "–", "–"),
            (f"grown ({method})", grown_curve[-1]["val_loss"], grown_curve[-1]["flops"],
             f"{s['flops_to_target']:.3g}" if s["reached"] else "not reached",
             f"{100 * s['saving']:.0f}%" if s["reached"] else "–",
             f"{100 * s['saving_incl_source']:.0f}%" if s["reached"] else "–")]
    typer.secho("[4/4] results (validation loss on held-out stdlib modules):", bold=True)
    typer.echo(f"      {'run':22s} {'val loss':>9s} {'train FLOPs':>12s} {'FLOPs to scratch loss':>22s} "
               f"{'saving':>7s} {'incl. source':>13s}")
    for name, loss, fl, reach, sav, sav_src in rows:
        typer.echo(f"      {name:22s} {loss:9.3f} {fl:12.3g} {reach:>22s} {sav:>7s} {sav_src:>13s}")
    png = _plot(out / "growth.png", grown_curve, scratch_curve, source_flops, method, target_loss)
    caveat = saving_caveat(grown_curve, scratch_curve)
    summary = {"method": method, "method_from": why, "source_val_loss": source_loss, "scratch_val_loss": target_loss,
               "grown_val_loss": grown_curve[-1]["val_loss"], "source_flops": source_flops, "scratch_flops": c_scratch,
               **s, "caveat": caveat, "plot": str(png)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    typer.secho(f"\ndone in {time.time() - t0:.0f} s.", fg="green")
    if s["reached"]:
        typer.echo(f"  the grown model reached scratch's final loss with {100 * s['saving']:.0f}% fewer training FLOPs "
                   f"({100 * s['saving_incl_source']:.0f}% counting the source's pretraining)"
                   + (f" — caveat: {caveat}." if caveat else "."))
    else:
        typer.echo("  the grown model did not reach scratch's final loss within the same FLOPs"
                   + (f" — caveat: {caveat}." if caveat else "."))
    typer.echo(f"  runs       : {src_dir}/, {grown_dir}/, {scratch_dir}/ (normal checkpoint directories)")
    typer.echo(f"  plot       : {png}")
    typer.echo(f"  try        : morphlm generate {grown_dir} --prompt 'def main(' ; morphlm bench growth --quick")
    return summary


def _plot(png: Path, grown: list[dict], scratch: list[dict], source_flops: float, method: str, target: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot([p["flops"] for p in scratch], [p["val_loss"] for p in scratch], "k--o", ms=3, label="scratch")
    ax.plot([p["flops"] for p in grown], [p["val_loss"] for p in grown], "-o", ms=3, color="C1",
            label=f"grown by {method} (source cost excluded)")
    ax.plot([p["flops"] + source_flops for p in grown], [p["val_loss"] for p in grown], ":", color="C1",
            label=f"grown by {method} (source cost included)")
    ax.axhline(target, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("cumulative training FLOPs")
    ax.set_ylabel("validation loss (nats/token)")
    top = max(grown[0]["val_loss"], target) + 1.0
    ax.set_ylim(min(p["val_loss"] for p in grown + scratch) - 0.1, top)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("morphlm demo: growing a small GPT vs training from scratch (stdlib corpus)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png
