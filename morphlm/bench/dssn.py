"""The depth-scaled sandwich norm benchmark: ``morphlm bench dssn``.

Pangu Ultra (Yin et al. 2025, arXiv 2504.07866, §2) claims that the depth-scaled sandwich norm (DSSN: a norm
before and after each sub-layer, the output norm's gain initialised to c/√L with c_attn = 0.283, c_mlp = 0.432)
together with TinyInit (every matrix std √(1/(2dL)), embedding std 0.5) removes the loss spikes of deep models.
This benchmark tests that claim on deep, narrow causal LMs trained at a learning rate high enough to make pre-norm
unstable. Three arms, the core's ``norm_placement`` (:mod:`morphlm.model.transformer`):

* ``pre``: pre-norm, ``h + f(N(h))``, the default init (std 0.02, GPT-2 scaled residual projections);
* ``sandwich``: ``h + N_out(f(N_in(h)))`` with unit gains and the default init;
* ``dssn``: the sandwich with depth-scaled output gains and TinyInit.

Protocol (the same for every arm of a seed):

* Data: the Gutenberg books split by WHOLE BOOK into train and held-out books (``val_fraction`` of the books,
  :func:`morphlm.data.prepare_lm_store`), one BPE tokenizer; within a seed every arm sees the same batches in the
  same order (``LMBatches`` seeded with the seed) and is evaluated on the same held-out windows.
* Training: fit() — AdamW, a short linear warmup then cosine decay, gradient clipping at ``grad_clip`` (the clip
  bounds the update, not the spike: the logged gradient norm is the norm BEFORE clipping), ``precision`` (auto:
  bf16 autocast on a CPU with native bf16).
* Spike (defined once, :func:`count_spikes`): a training step whose loss exceeds by more than ``spike_margin``
  nats (0.5) the running minimum, over the EARLIER steps, of the ``spike_window``-step (10) moving average of the
  training loss (or whose loss is not finite). The moving average matters: at the full profile's shape (1024
  tokens per step, books of different difficulty) smooth 100-step runs of pre-norm and DSSN already had steps 0.35
  and 0.42 nats above the running minimum of the RAW losses, so that reference would count ordinary batch noise as
  spikes. Consecutive spike steps form one spike event; both counts are reported, the summary uses the steps.
* Metrics per (arm, seed): spike steps and events, final validation loss (nats/token on held-out books), the
  per-step loss and gradient-norm traces (metrics.jsonl) that the plot draws.
* Over seeds: mean ± sample std; ``dssn_minus_pre`` is the mean of the PAIRED per-seed differences of the final
  validation loss (negative = DSSN better).
* Goals: ``dssn_spike_free_where_pre_spikes`` (DSSN has no spike step in any seed where pre-norm had at least one)
  and ``dssn_final_loss_no_worse`` (``dssn_minus_pre <= 0``). When pre-norm does not spike in any seed the first is
  not measurable: None, with the reason in ``goal_notes``.

Every (arm, seed) run is cached through :class:`~morphlm.bench.runner.ResultCache` and checkpointed while it runs,
so an interrupted run resumes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .common import (bench_work_dir, check_run_settings, prepare_store, provenance_note, pyplot, results_file,
                     save_plot, store_meta)
from .common import fmt as _f
from .common import config_hash as _hash
from .runner import (STOP, BenchInterrupted, Outcomes, ResultCache, fit_run, guarded_job,  # noqa: F401
                     run_jobs, run_precision, train_lm_arm, worker_setup)
from .stats import mean_std

log = logging.getLogger("morphlm.bench.dssn")

SCHEMA_VERSION = 1

ARMS: dict[str, str] = {
    "pre": "pre-norm h + f(N(h)), default init (std 0.02, residual projections scaled by 1/sqrt(2L))",
    "sandwich": "sandwich h + N_out(f(N_in(h))), unit gains, default init",
    "dssn": "depth-scaled sandwich norm: N_out gain c/sqrt(L) (c_attn 0.283, c_mlp 0.432) + TinyInit (std "
            "sqrt(1/(2dL)), embedding std 0.5) (Yin et al. 2025, arXiv 2504.07866, §2)",
}
SUMMARY_KEYS = ("spikes_pre", "spikes_sandwich", "spikes_dssn", "dssn_minus_pre", "seeds")


class BenchError(ValueError):
    """The benchmark cannot run with these settings; the message names the setting and the fix."""


@dataclass
class DSSNBenchConfig:
    """Everything that shapes ``morphlm bench dssn``. The profiles below fill it."""

    profile: str = "full"  # full | quick | test
    corpus: str = "shakespeare"
    max_bytes: int | None = None
    val_fraction: float = 0.1
    vocab_size: int = 2048
    seq_len: int = 128
    batch_size: int = 8
    eval_batches: int = 8
    d_model: int = 64
    n_layers: int = 32
    n_heads: int = 4
    n_kv_heads: int = 2
    steps: int = 300
    warmup_steps: int = 10
    lr: float = 3e-2
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 50
    spike_margin: float = 0.5
    spike_window: int = 10
    precision: str = "auto"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])

    def validate(self) -> None:
        check_run_settings(self, BenchError)
        if not self.lr > 0:
            raise BenchError(f"lr={self.lr}: the learning rate must be positive")
        if not self.spike_margin > 0:
            raise BenchError(f"spike_margin={self.spike_margin}: the spike margin (nats) must be positive")
        if self.spike_window < 1:
            raise BenchError(f"spike_window={self.spike_window}: the smoothing window of the spike reference must "
                             f"be >= 1 step")
        if self.grad_clip <= 0:
            raise BenchError(f"grad_clip={self.grad_clip}: must be > 0 (the gradient-norm trace is logged only "
                             f"when clipping is on)")
        from ..model.config import ConfigError

        for arm in ARMS:
            try:
                self.arm_config(arm)
            except ConfigError as exc:
                raise BenchError(f"arm {arm}: {exc}") from exc

    def arm_config(self, arm: str):
        from ..model.config import PRESETS, ModelConfig

        if arm not in ARMS:
            raise BenchError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
        return ModelConfig.from_dict({**PRESETS["tiny-llama"], "name": f"dssn-bench-{arm}",
                                      "vocab_size": self.vocab_size, "d_model": self.d_model,
                                      "n_layers": self.n_layers, "n_heads": self.n_heads,
                                      "n_kv_heads": self.n_kv_heads, "max_seq_len": self.seq_len,
                                      "norm_placement": arm})

    def train_args(self, seed: int):
        from ..train.optim import TrainArgs

        return TrainArgs(max_steps=self.steps, schedule_steps=self.steps, lr=self.lr, warmup_steps=self.warmup_steps,
                         min_lr_ratio=self.min_lr_ratio, weight_decay=self.weight_decay, eval_every=self.eval_every,
                         grad_clip=self.grad_clip, seed=seed, progress=False, device="cpu",
                         precision=self.precision)


def default_corpus() -> str:
    from .growth_config import default_corpus as growth_default

    return growth_default()


def full_config(**changes: Any) -> DSSNBenchConfig:
    """The committed run: 3 arms × 3 seeds, d=64, L=32 (4 heads, 2 KV heads, SwiGLU, RMSNorm, RoPE, untied
    embeddings; 1.84M parameters of which 0.26M embeddings), vocab 2048, context 128, batch 8 (1024 tokens per
    step), 300 steps (0.31M tokens per run), AdamW at lr 3e-2 (10 warmup steps, cosine to 3e-3), clip 1.0.

    The learning rate, 3e-2 (15× the 2e-3 our 4-layer benchmarks train at), is chosen from 100-step single-seed
    probes at this exact shape (cosine over 100 steps; spikes by the moving-average reference, raw-minimum excess
    in brackets): at 3e-3 and 1e-2 pre-norm's gradient norm spiked in the warmup (9.2 and 4.6) but its loss never
    rose 0.5 nats (max +0.22 / +0.35) — it sat on the unigram plateau (validation 6.44 / 6.45) — so the spike
    goal could not have been measured; at 1e-2 plain sandwich had one spike (step 16, +0.7, gradient norm 3.6) and
    DSSN + TinyInit none (gradient norm ≤ 1.3, validation 5.80). At 3e-2 pre-norm spikes (step 11: +1.5 nats,
    gradient norm 11.8; validation 6.50) — and so, once, does DSSN (step 13: +1.05, gradient norm 8.6), which still
    ends far lower (5.89). So the full run may well find the claim only partly reproduced; one seed of 100 steps is
    no verdict, which is what the 3 seeds × 300 steps are for. The quick profile (L=12, 40 steps) is too shallow
    and short to be evidence either way.

    Sizing, measured on this 2-core machine (single-threaded, bf16 autocast, other benchmarks running): one
    training step of the L=32 model on 8 × 128 tokens takes ≈ 0.62 s (pre), ≈ 0.68 s (sandwich), ≈ 0.8 s (dssn):
    ≈ 2.1 s per step of all three arms, × 3 seeds over two single-threaded workers, × 1.05 for the evaluations
    (8 held-out batches every 50 steps): ≈ 3.3 s of wall time per step; 300 steps ≈ 17 min, plus the token store
    ≈ 19 min — inside the 30-minute budget with room for a busier machine."""
    cfg = DSSNBenchConfig(profile="full", corpus=default_corpus())
    return dataclasses.replace(cfg, **changes)


def quick_config(**changes: Any) -> DSSNBenchConfig:
    """One seed at a small size, every arm: a smoke test of the whole pipeline (< 60 s on 2 cores), not a
    measurement."""
    cfg = DSSNBenchConfig(profile="quick", corpus=default_corpus(), max_bytes=2_000_000, vocab_size=512, seq_len=64,
                          batch_size=4, eval_batches=2, d_model=32, n_layers=12, n_heads=2, n_kv_heads=1, steps=40,
                          warmup_steps=4, eval_every=20, seeds=[0])
    return dataclasses.replace(cfg, **changes)


def ci_config(**changes: Any) -> DSSNBenchConfig:
    """The CI profile (tests/test_bench_dssn.py): like --quick, smaller still, on whatever corpus the test gives."""
    cfg = quick_config(profile="test", max_bytes=300_000, vocab_size=300, seq_len=32, batch_size=2, d_model=32,
                       n_layers=6, n_heads=2, n_kv_heads=1, steps=6, warmup_steps=1, eval_every=3, eval_batches=1)
    return dataclasses.replace(cfg, **changes)


# ------------------------------------------------------------------------------------------- spikes
def count_spikes(losses: list[float], margin: float, window: int = 1) -> dict[str, Any]:
    """Spikes of a training-loss trace. The reference of step i (0-based in ``losses``) is the running minimum,
    over the EARLIER steps j < i, of the mean of the last ``window`` finite losses up to j (fewer at the start);
    step i spikes when ``losses[i] > reference + margin``, or when its loss is not finite (a diverged step). The
    first step never spikes. ``window = 1`` is the plain running minimum of the raw losses; a wider window keeps
    the minimum of a few lucky easy batches from counting ordinary batch-to-batch noise as spikes.

    Returns ``{"steps": n_spike_steps, "events": n_runs_of_consecutive_spike_steps, "at": [indices],
    "max_excess": largest loss − reference (0 when no step rose above it; inf after a non-finite loss)}``."""
    import math

    if not margin > 0:
        raise BenchError(f"spike margin {margin}: must be > 0")
    if window < 1:
        raise BenchError(f"spike window {window}: must be >= 1 step")
    at: list[int] = []
    recent: list[float] = []
    events, ref, excess = 0, math.inf, 0.0
    for i, loss in enumerate(losses):
        loss = float(loss)
        if i > 0:
            if math.isfinite(loss):
                excess = max(excess, loss - ref)
                spike = loss > ref + margin
            else:
                excess, spike = math.inf, True
            if spike:
                if not at or at[-1] != i - 1:
                    events += 1
                at.append(i)
        if math.isfinite(loss):
            recent = (recent + [loss])[-window:]
            ref = min(ref, sum(recent) / len(recent))
    return {"steps": len(at), "events": events, "at": at, "max_excess": max(excess, 0.0)}


# ------------------------------------------------------------------------------------------- one (arm, seed) run
def default_work_dir() -> Path:
    return bench_work_dir("dssn-bench")


def results_path(cfg: DSSNBenchConfig) -> Path:
    """benchmarks/results/dssn.json (``$MORPHLM_RESULTS`` moves the folder); dssn-quick.json / dssn-test.json for
    the small profiles."""
    return results_file("dssn", cfg.profile)


def _arm_key(cfg: DSSNBenchConfig, arm: str, seed: int, data_fp: str) -> str:
    relevant = {"model": cfg.arm_config(arm).to_dict(), "args": asdict(cfg.train_args(seed)),
                "batch": [cfg.batch_size, cfg.seq_len, cfg.eval_batches], "data": data_fp, "v": SCHEMA_VERSION}
    return f"{arm}-s{seed}-{_hash(relevant)}"


def run_arm(cfg: DSSNBenchConfig, arm: str, seed: int, work: Path) -> dict[str, Any]:
    """Train ``arm`` for ``seed`` (resuming its checkpoint when a previous run was cut short); returns and caches its
    record (traces included); the run folder is removed once the record is cached."""
    tokenizer, store = prepare_store(cfg, show_progress=False)

    def describe(model, model_cfg, data, res, records) -> dict[str, Any]:
        steps = [r for r in records if "loss" in r]
        trace = {"step": [int(r["step"]) for r in steps], "loss": [float(r["loss"]) for r in steps],
                 "grad_norm": [float(r["grad_norm"]) if "grad_norm" in r else None for r in steps]}
        curve = [{"step": int(r["step"]), "val_loss": float(r["val_loss"])} for r in records if "val_loss" in r]
        if not curve:
            raise BenchError(f"{arm} seed {seed}: the run logged no validation loss; eval_every must be <= steps")
        spikes = count_spikes(trace["loss"], cfg.spike_margin, cfg.spike_window)
        return {"params": sum(p.numel() for p in model.parameters()), "tokens": int(res.tokens),
                "steps": int(res.steps), "final_val_loss": curve[-1]["val_loss"], "curve": curve, "trace": trace,
                "spike_steps": spikes["steps"], "spike_events": spikes["events"],
                "spike_at": [trace["step"][i] for i in spikes["at"]], "max_excess": spikes["max_excess"],
                "precision": run_precision(records, res.precision)}

    return train_lm_arm(cfg, arm, seed, work, _arm_key(cfg, arm, seed, store.meta["corpus_fingerprint"]),
                        tokenizer=tokenizer, store=store, init_label="dssn-bench-init", preset=f"dssn-bench {arm}",
                        error=BenchError, describe=describe)


def job(payload: dict[str, Any]) -> dict[str, Any]:
    """Worker entry point (:func:`morphlm.bench.runner.run_jobs`): one (arm, seed) run from plain data."""
    worker_setup()
    cfg = DSSNBenchConfig(**payload["cfg"])
    return guarded_job(lambda: run_arm(cfg, payload["name"], payload["seed"], Path(payload["work"])))


# ------------------------------------------------------------------------------------------- analysis
def analyse(runs: dict[str, dict[int, dict]]) -> dict[str, Any]:
    """Per-arm statistics over seeds from ``{arm: {seed: record}}``: spike steps/events and final validation loss
    (mean ± std), and the paired per-seed difference of the final loss to pre-norm."""
    pre = runs.get("pre", {})
    arms: dict[str, Any] = {}
    for arm, by_seed in runs.items():
        rows = [by_seed[s] for s in sorted(by_seed)]
        loss = mean_std([r["final_val_loss"] for r in rows])
        spk = mean_std([r["spike_steps"] for r in rows])
        ev = mean_std([r["spike_events"] for r in rows])
        diff = mean_std([r["final_val_loss"] - pre[s]["final_val_loss"] for s, r in sorted(by_seed.items())
                         if s in pre])
        arms[arm] = {"seeds": sorted(by_seed), "final_val_loss": loss["mean"], "final_val_loss_std": loss["std"],
                     "spike_steps": spk["mean"], "spike_steps_std": spk["std"], "spike_events": ev["mean"],
                     "spike_steps_per_seed": [r["spike_steps"] for r in rows],
                     "minus_pre": diff["mean"], "minus_pre_std": diff["std"], "params": rows[0]["params"]}
    return arms


def summarise(arms: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    """The summary: :data:`SUMMARY_KEYS`, ``std`` of each, ``goals`` and ``goal_notes`` (why a goal is None)."""
    def get(arm: str, key: str):
        return arms[arm][key] if arm in arms else None

    s: dict[str, Any] = {"spikes_pre": get("pre", "spike_steps"), "spikes_sandwich": get("sandwich", "spike_steps"),
                         "spikes_dssn": get("dssn", "spike_steps"), "dssn_minus_pre": get("dssn", "minus_pre"),
                         "seeds": len(seeds)}
    s["std"] = {"spikes_pre": get("pre", "spike_steps_std"), "spikes_sandwich": get("sandwich", "spike_steps_std"),
                "spikes_dssn": get("dssn", "spike_steps_std"), "dssn_minus_pre": get("dssn", "minus_pre_std")}
    notes: dict[str, str] = {}
    pre_seeds = get("pre", "spike_steps_per_seed")
    dssn_seeds = get("dssn", "spike_steps_per_seed")
    if pre_seeds is None or dssn_seeds is None:
        spike_goal = None
        notes["dssn_spike_free_where_pre_spikes"] = "not measurable: the pre-norm or DSSN runs are missing"
    elif not any(pre_seeds):
        spike_goal = None
        notes["dssn_spike_free_where_pre_spikes"] = ("not measurable: pre-norm did not spike in any seed at this "
                                                     "learning rate and depth (raise lr or n_layers)")
    else:
        spiking = [i for i, n in enumerate(pre_seeds) if n]
        spike_goal = all(dssn_seeds[i] == 0 for i in spiking)
    diff = s["dssn_minus_pre"]
    if diff is None:
        notes["dssn_final_loss_no_worse"] = "not measurable: the pre-norm or DSSN runs are missing"
    s["goals"] = {"dssn_spike_free_where_pre_spikes": spike_goal,
                  "dssn_final_loss_no_worse": None if diff is None else diff <= 0.0}
    s["goal_notes"] = notes
    return s


# ------------------------------------------------------------------------------------------- plot and table
def plot_results(results: dict[str, Any], png: str | Path) -> Path:
    """Two panels against the step, one line per (arm, seed): training loss (spike steps marked) and the gradient
    norm before clipping (log scale)."""
    plt = pyplot()

    fig, (ax_l, ax_g) = plt.subplots(2, 1, figsize=(9, 7), dpi=120, sharex=True)
    colors = {"pre": "tab:red", "sandwich": "tab:blue", "dssn": "tab:green"}
    for arm, by_seed in results["runs"].items():
        m = results["arms"][arm]
        for i, (seed, r) in enumerate(sorted(by_seed.items())):
            tr = r["trace"]
            label = (f"{arm}: val {m['final_val_loss']:.3f}, spike steps {m['spike_steps']:.1f}" if i == 0 else None)
            ax_l.plot(tr["step"], tr["loss"], color=colors.get(arm), lw=0.9, alpha=0.8, label=label)
            if r["spike_at"]:
                ys = [tr["loss"][tr["step"].index(s)] for s in r["spike_at"]]
                ax_l.scatter(r["spike_at"], ys, color=colors.get(arm), marker="x", s=18)
            gn = [(s, g) for s, g in zip(tr["step"], tr["grad_norm"]) if g is not None and g > 0]
            if gn:
                ax_g.plot([s for s, _ in gn], [g for _, g in gn], color=colors.get(arm), lw=0.9, alpha=0.8,
                          label=arm if i == 0 else None)
    ax_l.set_ylabel("training loss (nats/token)")
    c = results["config"]
    ax_l.legend(fontsize=8, title=f"means over seeds; x = spike: loss > running min of the {c['spike_window']}-step "
                                  f"mean + {c['spike_margin']}",
                title_fontsize=8)
    ax_l.grid(alpha=0.3)
    ax_g.set_yscale("log")
    ax_g.set_ylabel("gradient norm (before clipping)")
    ax_g.set_xlabel("step")
    ax_g.grid(alpha=0.3)
    ax_g.legend(fontsize=8)
    c = results["config"]
    ax_l.set_title(f"DSSN benchmark: d={c['d_model']}, L={c['n_layers']}, lr {c['lr']:g}, ctx {c['seq_len']}, "
                   f"{c['steps']} steps × {c['batch_size'] * c['seq_len']} tokens, {results['summary']['seeds']} "
                   f"seed(s), {results.get('precision', '?')}", fontsize=9)
    return save_plot(fig, png)


def markdown_table(results: dict[str, Any]) -> str:
    """The README table of a results dict (or a loaded results JSON)."""
    s, arms = results["summary"], results["arms"]
    lines = ["| arm | spike steps (mean ± std) | spike events | final val loss | − pre-norm (paired) |",
             "|---|---|---|---|---|"]
    for arm in ARMS:
        if arm not in arms:
            continue
        m = arms[arm]
        lines.append(f"| {arm} | {_f(m['spike_steps'], '.1f')} ± {_f(m['spike_steps_std'], '.1f')} | "
                     f"{_f(m['spike_events'], '.1f')} | {_f(m['final_val_loss'])} ± {_f(m['final_val_loss_std'])} | "
                     f"{'–' if arm == 'pre' else _f(m['minus_pre'], '+.3f')} |")
    goals = ", ".join(f"{k}: {v}" + (f" ({s['goal_notes'][k]})" if k in s["goal_notes"] else "")
                      for k, v in s["goals"].items())
    c = results["config"]
    lines += ["", f"{s['seeds']} seed(s); d={c['d_model']}, L={c['n_layers']}, lr {c['lr']:g}, "
                  f"{c['steps']} steps; spike = loss > running min of the {c['spike_window']}-step mean + "
                  f"{c['spike_margin']} nats. Goals — {goals}. "
                  + provenance_note(results)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- the benchmark
def run_benchmark(cfg: DSSNBenchConfig, *, out_json: str | Path | None = None, work_dir: str | Path | None = None,
                  workers: int | None = None, plot: bool = True) -> dict[str, Any]:
    """Run (or resume) the benchmark and write the results JSON (+ plot next to it); returns the results. A Ctrl-C /
    SIGTERM stops it with :class:`~morphlm.bench.runner.BenchInterrupted` and writes no results."""
    with STOP:
        return _run(cfg, out_json=out_json, work_dir=work_dir, workers=workers, plot=plot)


def _run(cfg: DSSNBenchConfig, *, out_json, work_dir, workers, plot) -> dict[str, Any]:
    import torch

    from ..train.steps import resolve_precision
    from .common import metadata, usable_cores, write_results

    cfg.validate()
    work = Path(work_dir) if work_dir is not None else default_work_dir()
    work.mkdir(parents=True, exist_ok=True)
    out_json = Path(out_json) if out_json is not None else results_path(cfg)
    t0 = time.perf_counter()
    tokenizer, store = prepare_store(cfg)
    if workers is None:
        workers = min(usable_cores(), 2)
    payload = asdict(cfg)
    outcomes = Outcomes()
    jobs = [{"name": a, "seed": s, "cfg": payload, "work": str(work)} for a in ARMS for s in cfg.seeds]
    run_jobs(jobs, job, workers=workers, desc="dssn bench: arms", on_done=outcomes.collect)
    runs, failures = outcomes.runs, outcomes.failures
    if "pre" not in runs:
        raise BenchError(f"the pre-norm runs failed ({failures}); every difference is measured against them")
    runs = {a: runs[a] for a in ARMS if a in runs}
    arm_stats = analyse(runs)
    results = {
        "benchmark": "dssn", "schema_version": SCHEMA_VERSION, **metadata(),
        "precision": resolve_precision(torch.device("cpu"), cfg.precision),
        "summary": summarise(arm_stats, cfg.seeds),
        "protocol": {
            "split": "train/validation by whole books (val_fraction of the books held out)",
            "tokens": "every arm of a seed sees the same batches in the same order and the same held-out windows",
            "spike": f"a training step whose loss exceeds by more than {cfg.spike_margin} nats the running minimum "
                     f"over earlier steps of the {cfg.spike_window}-step moving average of the training loss (or is "
                     f"not finite); consecutive spike steps are one event; spikes_* = mean spike steps per seed",
            "grad_norm": "metrics.jsonl grad_norm: the global norm before clipping",
            "differences": "paired per seed (dssn − pre), mean ± sample std over seeds; negative = DSSN better",
        },
        "config": {**asdict(cfg), "tokens_per_run": cfg.steps * cfg.batch_size * cfg.seq_len},
        "data": {"corpus": cfg.corpus, "store": str(store.path), "vocab_size": tokenizer.vocab_size,
                 **store_meta(store, "val_doc_names")},
        "arm_descriptions": dict(ARMS), "arms": arm_stats,
        "runs": {a: {str(s): r for s, r in sorted(by.items())} for a, by in runs.items()},
        "failures": failures, "wall_s": time.perf_counter() - t0,
    }
    return write_results(out_json, results, plot_results if plot else None)
