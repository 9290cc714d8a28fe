"""The mixture-of-experts benchmark: ``morphlm bench moe``.

Six arms trained on the same tokens, at matched ACTIVE training FLOPs per token on the one ruler
(:mod:`morphlm.train.flops`; :mod:`.moe_config` builds them): dense; vanilla MoE (8 experts per layer, top-1,
softmax + Switch aux loss 1e-2); loss-free-bias MoE (Wang et al. 2024, arXiv 2408.15664); UniPool with a pool of
M = 8L experts and with a reduced pool M = 4L (Huang et al. 2026: one pool shared by every layer, NormRouter, pool
loss); LoopMoE at vanilla's total and active parameters by capacity balancing (Chen et al. 2026; the rule is a
reconstruction). The differences the ruler still sees — UniPool's routers over M experts (d·M instead of d·E per
layer), LoopMoE's routers over E' experts and IterAdaLN's W_mod (6·d² per block pass), the dense width rounded to an
integer — are reported per arm as ``flops_per_token_vs_vanilla``; the plot puts every curve on the FLOPs axis.

Protocol (the same for every arm of a seed):

* Data: the Gutenberg books split by WHOLE BOOK into train and held-out books (``val_fraction`` of the books;
  :func:`morphlm.data.prepare_lm_store`), one BPE tokenizer; within a seed every arm sees the same batches in the
  same order (``LMBatches`` seeded with the seed) and is evaluated on the same held-out windows.
* Training: fit() — AdamW, linear warmup, cosine decay, clip 1.0, ``precision`` (default auto: bf16 autocast on a
  CPU with native bf16, as fit() decides; the precision used is recorded per run). The MoE balancing losses flow
  through fit's one loop; routing metrics come from the run's metrics.jsonl.
* Metrics per (arm, seed): final validation loss (nats/token on held-out books), the validation curve against
  cumulative training FLOPs, and the expert load averaged over the last quarter of the steps: coefficient of
  variation, MaxVio (Wang et al. 2024 §4.1) and dead experts (``moe_cv``, ``moe_max_vio``, ``moe_dead`` — per-layer
  means, dead summed over layers — and for UniPool ``pool0_*`` over the layer-averaged pool load).
* Over seeds: mean ± sample std of the final loss per arm, and of the PAIRED per-seed differences to vanilla
  (``*_minus_vanilla``: negative = better than vanilla).

Besides the training arms: the layer benchmark (:mod:`.moe_layer`, ours vs Hugging Face's Mixtral experts) and the
simulator's step-time error on held-out configs (:func:`morphlm.sim.validate`, profile ``cpu-local``).

Every (arm, seed) run is cached through :class:`~morphlm.bench.runner.ResultCache` (and checkpointed while it runs,
so an interrupted run resumes mid-way); so are the layer and simulator measurements. The analysis, summary, plot and
README table are :mod:`.moe_report`'s.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .moe_config import (ARMS, SCHEMA_VERSION, BenchError, MoEBenchConfig, ci_config, full_config,  # noqa: F401
                         quick_config)
from .moe_report import (GOALS, LOAD_KEYS, analyse, loss_at_flops, markdown_table, mean_curve,  # noqa: F401
                         plot_results, summarise)
from .common import bench_work_dir, prepare_store, results_file, store_meta  # noqa: F401
from .common import config_hash as _hash
from .runner import (STOP, Outcomes, ResultCache, guarded_job, run_jobs, run_precision, train_lm_arm,
                     worker_setup)

log = logging.getLogger("morphlm.bench.moe")


def default_work_dir() -> Path:
    return bench_work_dir("moe-bench")


def results_path(cfg: MoEBenchConfig) -> Path:
    """benchmarks/results/moe.json (``$MORPHLM_RESULTS`` moves the folder); moe-quick.json / moe-test.json for the
    small profiles, so a smoke test never overwrites the committed results."""
    return results_file("moe", cfg.profile)


# ------------------------------------------------------------------------------------------- one (arm, seed) run
def _arm_key(cfg: MoEBenchConfig, arm: str, seed: int, data_fp: str) -> str:
    relevant = {"model": cfg.arm_config(arm).to_dict(), "args": asdict(cfg.train_args(seed)),
                "batch": [cfg.batch_size, cfg.seq_len, cfg.eval_batches], "data": data_fp, "v": SCHEMA_VERSION}
    return f"{arm}-s{seed}-{_hash(relevant)}"


def load_summary(records: list[dict[str, Any]], fraction: float = 0.25) -> dict[str, float | None]:
    """Mean of the routing metrics (:data:`LOAD_KEYS`) over the last ``fraction`` of the step records of a
    metrics.jsonl (at least one record); None for a metric the run did not log (a dense model logs none)."""
    steps = [r for r in records if "loss" in r]
    tail = steps[-max(1, int(round(len(steps) * fraction))):] if steps else []
    out: dict[str, float | None] = {}
    for key in LOAD_KEYS:
        vals = [float(r[key]) for r in tail if isinstance(r.get(key), (int, float))]
        out[key] = statistics.fmean(vals) if vals else None
    return out


def run_arm(cfg: MoEBenchConfig, arm: str, seed: int, work: Path) -> dict[str, Any]:
    """Train ``arm`` for ``seed`` (resuming its checkpoint when a previous run was cut short); returns and caches its
    record. The run folder is removed once the record is cached (the record keeps the curve and load metrics)."""
    from ..train.flops import param_counts, training_flops_per_token

    tokenizer, store = prepare_store(cfg, show_progress=False)

    def describe(model, model_cfg, data, res, records) -> dict[str, Any]:
        curve = [{"step": int(r["step"]), "flops": float(r["flops"]), "tokens": int(r["tokens"]),
                  "val_loss": float(r["val_loss"])} for r in records if "val_loss" in r]
        if not curve:
            raise BenchError(f"{arm} seed {seed}: the run logged no validation loss; eval_every must be <= steps")
        total, active = param_counts(model_cfg)
        return {"total_params": total, "active_params": active,
                "flops_per_token": training_flops_per_token(model_cfg, cfg.seq_len),
                "train_flops": float(res.flops), "tokens": int(res.tokens), "steps": int(res.steps),
                "final_val_loss": curve[-1]["val_loss"], "curve": curve, "load": load_summary(records),
                "tok_per_s": statistics.median([float(r["tok_per_s"]) for r in records if "tok_per_s" in r]
                                               or [0.0]),
                "precision": run_precision(records, res.precision)}

    return train_lm_arm(cfg, arm, seed, work, _arm_key(cfg, arm, seed, store.meta["corpus_fingerprint"]),
                        tokenizer=tokenizer, store=store, init_label="moe-bench-init", preset=f"moe-bench {arm}",
                        error=BenchError, describe=describe)


def job(payload: dict[str, Any]) -> dict[str, Any]:
    """Worker entry point (:func:`morphlm.bench.runner.run_jobs`): one (arm, seed) run from plain data."""
    worker_setup()
    cfg = MoEBenchConfig(**payload["cfg"])
    return guarded_job(lambda: run_arm(cfg, payload["name"], payload["seed"], Path(payload["work"])))


# ------------------------------------------------------------------------------------------- layer and simulator
def measure_layer(cfg: MoEBenchConfig, work: Path) -> dict[str, Any]:
    """The layer benchmark (:func:`.moe_layer.layer_benchmark`) at the config's layer shape, cached per shape and
    torch/transformers version."""
    from .common import library_versions
    from .moe_layer import layer_benchmark

    shape = dict(tokens=cfg.layer_tokens, d=cfg.layer_d_model, d_ff=cfg.layer_d_ff, experts=cfg.layer_experts,
                 top_k=cfg.layer_top_k, repeats=cfg.layer_repeats)
    versions = library_versions()
    key = "layer-" + _hash({"shape": shape, "torch": versions["torch"], "hf": versions["transformers"],
                            "v": SCHEMA_VERSION})
    return ResultCache(work / "measurements").get_or_run(key, lambda: layer_benchmark(**shape), "the layer benchmark")


def measure_simulator(cfg: MoEBenchConfig, work: Path) -> dict[str, Any] | None:
    """The simulator's step-time MAPE on held-out dense configs (profile cpu-local), or None when ``simulator`` is
    off. ``tiny`` (the quick profile): one config, bf16, two timed steps — a smoke test of the path."""
    if cfg.simulator == "off":
        return None
    from ..sim import load_profile
    from ..sim.validate import HELD_OUT, QUICK, validate

    profile = load_profile("cpu-local")
    plan = {"full": (HELD_OUT, ("fp32", "bf16"), 8), "quick": (QUICK, ("fp32", "bf16"), 4),
            "tiny": (HELD_OUT[:1], ("bf16",), 2)}[cfg.simulator]
    key = "sim-" + _hash({"mode": cfg.simulator, "profile": profile.name, "date": profile.date, "v": SCHEMA_VERSION})

    def run() -> dict[str, Any]:
        configs, dtypes, steps = plan
        out = validate(profile, configs, dtypes=dtypes, steps=steps)
        return {**out, "mode": cfg.simulator}

    return ResultCache(work / "measurements").get_or_run(key, run, "the simulator check")


# ------------------------------------------------------------------------------------------- the benchmark
def run_benchmark(cfg: MoEBenchConfig, *, out_json: str | Path | None = None, work_dir: str | Path | None = None,
                  workers: int | None = None, plot: bool = True) -> dict[str, Any]:
    """Run (or resume) the benchmark and write the results JSON (+ plot next to it); returns the results. A Ctrl-C /
    SIGTERM stops it with :class:`~morphlm.bench.runner.BenchInterrupted` and writes no results; finished runs and
    measurements are cached, unfinished runs checkpointed, so the same call continues."""
    with STOP:
        return _run(cfg, out_json=out_json, work_dir=work_dir, workers=workers, plot=plot)


def _run(cfg: MoEBenchConfig, *, out_json, work_dir, workers, plot) -> dict[str, Any]:
    from ..train.steps import resolve_precision
    from .common import metadata, usable_cores, write_results

    cfg.validate()
    arms = cfg.selected_arms()
    work = Path(work_dir) if work_dir is not None else default_work_dir()
    work.mkdir(parents=True, exist_ok=True)
    out_json = Path(out_json) if out_json is not None else results_path(cfg)
    t0 = time.perf_counter()
    tokenizer, store = prepare_store(cfg)  # once, here: workers only open the cache
    if workers is None:
        workers = min(usable_cores(), 2)
    payload = asdict(cfg)
    outcomes = Outcomes()
    order = {"loopmoe": 0, "unipool": 1, "unipool-half": 1}  # longest first, so two workers finish together
    jobs = [{"name": a, "seed": s, "cfg": payload, "work": str(work)}
            for a in sorted(arms, key=lambda a: order.get(a, 2)) for s in cfg.seeds]
    run_jobs(jobs, job, workers=workers, desc="moe bench: arms", on_done=outcomes.collect)
    runs, failures = outcomes.runs, outcomes.failures
    if "vanilla" not in runs:
        raise BenchError(f"the vanilla MoE runs failed ({failures}); every difference is measured against them")
    runs = {a: runs[a] for a in ARMS if a in runs}  # the report's order, not the order the workers finished in
    layer = measure_layer(cfg, work)
    sim = measure_simulator(cfg, work)
    arm_stats = analyse(runs)
    van_cfg = cfg.arm_config("vanilla")
    import torch

    results = {
        "benchmark": "moe", "schema_version": SCHEMA_VERSION, **metadata(),
        "precision": resolve_precision(torch.device("cpu"), cfg.precision),
        "summary": summarise(arm_stats, cfg.seeds, layer, sim),
        "protocol": {
            "split": "train/validation by whole books (val_fraction of the books held out)",
            "tokens": "every arm of a seed sees the same batches in the same order and the same held-out windows",
            "matched": "active training FLOPs per token on train/flops.py (6·N_active + 12·L·d·T; looping × R); "
                       "residual differences in arms.*.flops_per_token_vs_vanilla (routers over more experts, "
                       "IterAdaLN's W_mod, the dense width rounded)",
            "differences": "paired per seed (arm − vanilla), mean ± sample std over seeds; negative = better",
            "load": "mean over the last quarter of the steps of metrics.jsonl's moe_cv / moe_max_vio / moe_dead "
                    "(UniPool: pool0_* over the layer-averaged pool load)",
            "layer": "morphlm/bench/moe_layer.py docstring", "simulator": "morphlm.sim.validate on held-out configs"},
        "config": {**asdict(cfg), "vanilla_config": van_cfg.to_dict(),
                   "tokens_per_run": cfg.steps * cfg.batch_size * cfg.seq_len},
        "data": {"corpus": cfg.corpus, "store": str(store.path), "vocab_size": tokenizer.vocab_size,
                 **store_meta(store, "val_doc_names")},
        "arm_descriptions": {a: ARMS[a] for a in arms},
        "arms": arm_stats, "layer": layer, "simulator": sim,
        "runs": {a: {str(s): r for s, r in sorted(by.items())} for a, by in runs.items()},
        "failures": failures, "wall_s": time.perf_counter() - t0,
    }
    return write_results(out_json, results, plot_results if plot else None)
