"""The growth benchmark: does reusing a small trained model make a larger one cheaper to train?

``morphlm bench growth`` pretrains the source model(s) itself, then trains ONE target architecture from
scratch and from every growth method (the operators of :mod:`morphlm.grow.api` and, when available, the
progressive schedules of :mod:`morphlm.grow.schedules`), for several seeds, and measures the papers' number
(bert2BERT, Chen et al. 2022, arXiv 2110.07143; LiGO, Wang et al. 2023, arXiv 2303.00980, Sec. 4): the
training FLOPs a method needs to reach the scratch run's *final* validation loss.

Protocol (every choice is the same for every arm of a seed):

* Data: a real corpus split into train/validation by whole documents (the Gutenberg folder: one document per
  book, so no book is on both sides; see :mod:`morphlm.data.tokens`). One BPE tokenizer, one token store.
  Within a seed every target run sees the same batches in the same order (``LMBatches`` seeded with the
  seed: batch k is a pure function of (seed, k)) and is evaluated on the same validation windows. The
  source pretrains on the same training split with its own batch stream, and a learned operator is
  fitted on a third stream, so no arm gets to see its own training batches twice.
* Models: pre-LN GPT (causal) or post-LN BERT (``--objective mlm``). Sources are the target at half depth
  (``half-depth``) or half width (``half-width``); each method grows along the dimension it is defined for:
  bert2BERT's FPI/AKI (and its two-stage schedule, which grows with AKI) are width operators (from
  ``half-width``), StackBERT/interpolation/MSG/LiGO/Mango and MSLT grow depth (from ``half-depth``); Apollo
  starts from nothing. Sources are pretrained with the same schedule shape for ``source_steps`` (half the
  target's steps in both presets, so a source is clearly worse than the scratch target, as in the papers;
  see :func:`full_config`).
* Schedule: every run (source, scratch, grown, scheduled) uses AdamW with linear warmup and cosine decay to
  ``min_lr_ratio`` over the same number of steps at the same peak LR; a grown model restarts the schedule
  at its start (as bert2BERT/LiGO/MSG do). Learned operators (LiGO, Mango) are fitted for
  ``operator_steps`` steps through the same training loop (scaled down from LiGO's 100 steps in a 400k-step
  run; their FLOPs are counted).
* FLOPs come from the one ruler (:mod:`morphlm.train.flops`, via ``fit``); a source's cost is its checkpoint's
  ``total_flops`` (lineage), an operator's is what :func:`morphlm.grow.api.grow_model` reports.

Metrics per arm and seed: the validation curve (eval every ``eval_every`` steps, plus before the first
step); the FLOPs at which it first reaches the scratch run's final validation loss, interpolated LINEARLY in
FLOPs between the two evaluations around the crossing (:func:`flops_to_reach`); C_scratch is the scratch
run's total training FLOPs. ``saving = 1 − C/C_scratch`` and ``speedup = C_scratch/C`` where C counts the
target's training FLOPs plus the operator's (the LiGO convention), and ``*_incl_source`` add the source's
pretraining FLOPs. A run that never reaches the scratch loss is reported with ``reached = false`` and a null
saving. Means and standard deviations are over the seeds where the arm reached the target; an arm counts as
reaching it only when every seed did.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

log = logging.getLogger("morphlm.bench.growth")

from .growth_analysis import (analyse, flops_to_reach, markdown_table, mean_curve, plot_results,  # noqa: F401
                              saving_numbers, summarise)
from .growth_config import (ARMS, SCHEDULE_NAMES, SCHEMA_VERSION, Arm, BenchError,  # noqa: F401 (re-exported)
                            GrowthBenchConfig, default_corpus, full_config, quick_config, register_arm, select_arms)
from .growth_jobs import (default_work_dir, derive_model_seed, job, make_batches, prepare_store,  # noqa: F401
                          run_arm, train_source)
from .runner import STOP, Outcomes, run_jobs


# ---------------------------------------------------------------------------- the benchmark
def run_benchmark(cfg: GrowthBenchConfig, *, out_json: str | Path | None = None, work_dir: str | Path | None = None,
                  workers: int | None = None, plot: bool = True) -> dict[str, Any]:
    """Run (or resume) the benchmark and write the results JSON (+ plot next to it); returns the results.
    A Ctrl-C / SIGTERM stops it with :class:`~morphlm.bench.runner.BenchInterrupted` and writes no results;
    finished sources and (arm, seed) runs are cached, so the same call continues."""
    with STOP:  # one stop request for the whole run (morphlm.bench.runner)
        return _run(cfg, out_json=out_json, work_dir=work_dir, workers=workers, plot=plot)


def _run(cfg: GrowthBenchConfig, *, out_json, work_dir, workers, plot) -> dict[str, Any]:
    from .common import metadata, store_meta, write_results

    cfg.validate()
    arms, notes = select_arms(cfg.methods)
    for n in notes:
        log.warning(n)
    work = Path(work_dir) if work_dir is not None else default_work_dir()
    work.mkdir(parents=True, exist_ok=True)
    out_json = Path(out_json) if out_json is not None else results_path(cfg)
    t0 = time.perf_counter()
    tokenizer, store = prepare_store(cfg)  # once, in this process: workers only open the cache
    if workers is None:
        from .common import usable_cores

        workers = min(usable_cores(), 2)
    payload_cfg = asdict(cfg)
    outcomes = Outcomes()

    sources = sorted({a.source for a in arms if a.source is not None})
    src_jobs = [{"kind": "source", "name": s, "seed": seed, "cfg": payload_cfg, "work": str(work)}
                for seed in cfg.seeds for s in sources]

    def collect_failure(p, r):  # a finished source is its checkpoint, not a record
        if not r["ok"]:
            outcomes.collect(p, r)

    if src_jobs:
        run_jobs(src_jobs, job, workers=workers, desc="growth bench: sources", on_done=collect_failure)

    # longest jobs first so two workers finish together
    order = {"scratch": 0, "ligo": 1, "mango": 1}
    arm_jobs = [{"kind": "arm", "name": a.name, "seed": seed, "cfg": payload_cfg, "work": str(work)}
                for a in sorted(arms, key=lambda a: order.get(a.name, 2)) for seed in cfg.seeds]
    run_jobs(arm_jobs, job, workers=workers, desc="growth bench: arms", on_done=outcomes.collect)
    runs, failures = outcomes.runs, outcomes.failures
    if "scratch" not in runs:
        raise BenchError(f"the scratch runs failed ({failures}); nothing to compare against")
    from ..model import TransformerLM
    from ..train.flops import training_flops_per_token

    methods = analyse(runs)
    src_info = {}
    for s in sources:
        src_cfg = cfg.model_config(cfg.sources[s])
        src_info[s] = {"config": src_cfg.to_dict(), "overrides": cfg.sources[s],
                       "parameters": TransformerLM(src_cfg).num_parameters(),
                       "flops_per_token": training_flops_per_token(src_cfg, cfg.seq_len),
                       "steps": cfg.source_steps or cfg.steps}
    tgt = cfg.model_config()
    tgt_params = TransformerLM(tgt).num_parameters()
    results = {
        "benchmark": "growth", "schema_version": SCHEMA_VERSION, **metadata(),
        "summary": summarise(methods, cfg.seeds, _corpus_label(cfg.corpus)),
        "protocol": {
            "saving": "1 - C_method/C_scratch; C = target training FLOPs + operator FLOPs until the validation "
                      "loss first reaches the scratch run's final validation loss (same seed), linear "
                      "interpolation in FLOPs between evaluations; C_scratch = the scratch run's total FLOPs",
            "saving_incl_source": "as saving, with the source model's pretraining FLOPs added to C",
            "speedup": "C_scratch / C", "split": "train/validation by whole documents (one per book)",
            "flops": "morphlm.train.flops (6N + 12LdT per token; operators as reported by grow_model)",
            "mean_std": "over seeds; an arm that missed the target in any seed reports no mean saving"},
        "config": {**asdict(cfg), "target_config": tgt.to_dict(),
                   "target_parameters": tgt_params,
                   "target_flops_per_token": training_flops_per_token(tgt, cfg.seq_len),
                   "target_tokens_per_parameter": cfg.steps * cfg.batch_size * cfg.seq_len / tgt_params},
        "data": {"corpus": cfg.corpus, "store": str(store.path), "vocab_size": tokenizer.vocab_size,
                 **store_meta(store, "val_doc_names")},
        "sources": src_info,
        "arms": {a.name: {"kind": a.kind, "method": a.method, "source": a.source, "description": a.description}
                 for a in arms},
        "methods": methods,
        "runs": {arm: {str(s): r for s, r in sorted(by.items())} for arm, by in runs.items()},
        "notes": notes, "failures": failures, "wall_s": time.perf_counter() - t0,
    }
    return write_results(out_json, results, plot_results if plot else None)


def results_path(cfg: GrowthBenchConfig) -> Path:
    """Where the results JSON goes by default: ``$MORPHLM_RESULTS`` or benchmarks/results/: growth.json,
    growth-mlm.json for the MLM objective, ``-quick`` appended for --quick."""
    from .common import results_file

    return results_file("growth" + ("-mlm" if cfg.objective == "mlm" else ""), "quick" if cfg.quick else "full")


def _corpus_label(corpus: str) -> str:
    p = Path(corpus)
    return f"gutenberg ({p})" if p.name == "gutenberg" else corpus


