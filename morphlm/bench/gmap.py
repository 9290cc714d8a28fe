"""The G-MAP benchmark: ``morphlm bench gmap``.

G-MAP (Wan et al. 2022, arXiv 2212.03613; :mod:`morphlm.model.gmap`) keeps a frozen general model as memory
while a domain model adapts, against forgetting. This benchmark compares it with domain-adaptive pretraining
(DAPT: Gururangan et al. 2020, arXiv 2004.10964 — continue pretraining on domain text) at CPU scale:

* **General model, once** (shared by every seed and arm — the common starting point, so the arms' differences
  are paired): a causal LM (SwiGLU, RMSNorm, RoPE) pretrained on the Gutenberg books, split by WHOLE BOOK into
  train and held-out books, one BPE tokenizer trained on the books.
* **Domain** = movie reviews: the unlabelled sentences of SST-2's TRAINING files — ``sst2-sentences/
  stsa.binary.train`` (labels dropped) and ``glue-sst2/train.tsv`` (its phrases, labels dropped) — deduplicated,
  with every sentence that also occurs in a dev file removed (counted in ``data.domain``), tokenized with the
  general model's tokenizer, split by sentence into domain train and held-out text. The dev sentences are
  never read into it.
* **Task** = SST-2: fine-tuning on ``glue-sst2/train.tsv``, accuracy on ``glue-sst2/dev.tsv`` (872 sentences) at
  the end of fine-tuning (no checkpoint is picked on dev). Classification goes through the core's ``--head cls``
  path (pooled first token); fine-tuning runs the model bidirectionally (``causal=False``): a causal model's first
  token sees only itself, so its pooled state could not read the sentence. The weights are the causal LM's.

Arms, each (arm, seed) one job (:data:`ARMS`):

* ``general``: the general model fine-tuned on SST-2 (``finetune_steps``);
* ``dapt``: the general model pretrained on the domain text (``domain_steps``), then fine-tuned (``finetune_steps``);
* ``gmap-<fusion>`` for each fusion strategy (single, multiple, gated, chunk_gated): the domain model starts as the
  general model, its layers ``gmap_layers`` read the frozen general model's hidden states (computed once per batch
  without gradients); domain pretraining (``domain_steps``) then fine-tuning (``finetune_steps``) with the memory
  kept, both through ``morphlm train`` (:func:`morphlm.train.run.train_run`: the checkpoint records the frozen
  model as a parent and does not copy it).

Equal trainable steps: DAPT and every G-MAP arm take the same domain steps on the same batches (within a seed) and
the same fine-tuning steps on the same batches. G-MAP's frozen model runs on every batch, so at equal trainable
steps it costs more compute: the wall time and FLOPs of each stage are recorded per arm (G-MAP's FLOPs count the
frozen model's forward, :mod:`morphlm.train.flops`).

Measured per (arm, seed): SST-2 dev accuracy; the general-domain validation loss after domain adaptation (the
held-out books, nats/token; G-MAP's with its memory) and ``forgetting`` = that loss minus the general model's
(0 for ``general``, which is not adapted); the domain validation loss after adaptation.

Over seeds: mean ± sample std. ``gmap_minus_dapt`` is the PAIRED per-seed accuracy difference G-MAP − DAPT in
points, per fusion (``gmap_minus_dapt_per_fusion``) and for the best fusion (picked by that same mean: an
optimistic choice, said so in ``goal_notes``). Goal: G-MAP ≥ DAPT + 0.5 points with less forgetting
(:data:`GOALS`), judged met (True), missed (False) or not measurable (None, with the reason).

Every (arm, seed) record and the general model are cached (:class:`~morphlm.bench.runner.ResultCache`, training
stages checkpoint while they run), so a rerun of the same command resumes; Ctrl-C stops cleanly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .common import (bench_work_dir, check_run_settings, config_hash, provenance_note, pyplot, results_file,
                     save_plot, store_meta)
from .common import fmt as _f
from .gmap_data import (DOMAIN_SOURCES, BenchError, check_task_files, domain_sentences,  # noqa: F401 (re-exported)
                        lm_val_loss, prepare_domain_store, prepare_general_store, task_files, write_domain_corpus)
from .runner import STOP, Outcomes, ResultCache, guarded_job, interruptible, run_jobs, worker_setup
from .stats import mean_std

log = logging.getLogger("morphlm.bench.gmap")

SCHEMA_VERSION = 1
FUSIONS = ("single", "multiple", "gated", "chunk_gated")
ARMS: dict[str, str] = {
    "general": "the general model fine-tuned on SST-2 (no domain adaptation)",
    "dapt": "domain-adaptive pretraining (continue pretraining on the movie-review sentences), then fine-tuning",
    **{f"gmap-{f}": f"G-MAP, {f.replace('_', '-')} fusion: domain pretraining with the frozen general model as "
                    f"memory, then fine-tuning with the memory" for f in FUSIONS},
}
SUMMARY_KEYS = ("gmap_minus_dapt", "forgetting_dapt", "forgetting_gmap", "seeds")
GOAL = "gmap_at_least_dapt_plus_0.5_with_less_forgetting"
GOALS = {GOAL: "best fusion: gmap_minus_dapt (paired, points) >= 0.5 and forgetting_gmap < forgetting_dapt"}


@dataclass
class GMAPBenchConfig:
    """Everything that shapes ``morphlm bench gmap``. The profiles below fill it."""

    profile: str = "full"  # full | quick | test
    corpus: str = "shakespeare"  # the general corpus (default: the Gutenberg books)
    max_bytes: int | None = None
    val_fraction: float = 0.1  # held-out BOOKS (whole documents)
    data_dir: str | None = None  # holds glue-sst2/ and sst2-sentences/ (default morphlm.data.paths.data_dir())
    domain_sources: list[str] = field(default_factory=lambda: list(DOMAIN_SOURCES))
    domain_val_fraction: float = 0.05  # held-out domain sentences
    task_train_subset: int | None = None  # fine-tune on a fixed random subset of SST-2 train (small profiles)
    vocab_size: int = 2048
    seq_len: int = 128
    batch_size: int = 16
    eval_batches: int = 8
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    gmap_layers: str = "1,3"  # chunk-gated chunks: general layers 0-1 and 2-3 (the paper's 5,11 of 12, scaled)
    gmap_weight_init: float = 1.0  # λ: 1 = the paper's replacement of the context
    pretrain_steps: int = 800
    domain_steps: int = 200
    finetune_steps: int = 200
    lr: float = 2e-3
    domain_lr: float = 1e-3
    finetune_lr: float = 1.5e-3
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    finetune_batch_size: int = 32
    finetune_max_len: int = 64
    precision: str = "auto"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])

    def validate(self) -> None:
        from ..model.config import ConfigError

        check_run_settings(self, BenchError, curve=False)
        for name in ("pretrain_steps", "domain_steps", "finetune_steps"):
            if getattr(self, name) < 1:
                raise BenchError(f"{name}={getattr(self, name)}: every stage needs at least 1 step")
        for name in ("lr", "domain_lr", "finetune_lr"):
            if not getattr(self, name) > 0:
                raise BenchError(f"{name}={getattr(self, name)}: a learning rate must be positive")
        bad = [s for s in self.domain_sources if s not in DOMAIN_SOURCES]
        if bad or not self.domain_sources:
            raise BenchError(f"domain_sources={self.domain_sources}: choose one or more of {', '.join(DOMAIN_SOURCES)}")
        if not 0.0 < self.domain_val_fraction < 0.5:
            raise BenchError(f"domain_val_fraction={self.domain_val_fraction}: must lie in (0, 0.5)")
        if self.task_train_subset is not None and self.task_train_subset < 2:
            raise BenchError(f"task_train_subset={self.task_train_subset}: need at least 2 examples (or None: all)")
        if self.finetune_max_len > self.seq_len:
            raise BenchError(f"finetune_max_len={self.finetune_max_len} exceeds seq_len={self.seq_len} (the model's "
                             f"max_seq_len); lower finetune_max_len")
        for arm in ARMS:
            try:
                self.task_config(arm)
            except ConfigError as exc:
                raise BenchError(f"arm {arm}: {exc}") from exc

    # -------------------------------------------------------------------------------------------- models
    def general_config(self):
        from ..model.config import PRESETS, ModelConfig

        return ModelConfig.from_dict({**PRESETS["tiny-llama"], "name": "gmap-bench-general",
                                      "vocab_size": self.vocab_size, "d_model": self.d_model,
                                      "n_layers": self.n_layers, "n_heads": self.n_heads,
                                      "n_kv_heads": self.n_heads, "max_seq_len": self.seq_len})

    def domain_config(self, arm: str):
        """The model of ``arm``'s domain stage (None for ``general``, which has none)."""
        if arm not in ARMS:
            raise BenchError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
        general = self.general_config()
        if arm == "general":
            return None
        if arm == "dapt":
            return general.replace(name="gmap-bench-dapt")
        return general.replace(name=f"gmap-bench-{arm}", gmap_layers=self.gmap_layers,
                               gmap_fusion=arm.removeprefix("gmap-"), gmap_memory_layers=self.n_layers,
                               gmap_weight_init=self.gmap_weight_init)

    def task_config(self, arm: str):
        """The classifier ``arm`` fine-tunes: its domain model (or the general one) with a cls head, bidirectional."""
        base = self.domain_config(arm) or self.general_config()
        return base.replace(name=f"gmap-bench-{arm}-sst2", head="cls", n_classes=2, causal=False)

    def train_args(self, stage: str, seed: int, out: str | Path | None = None):
        from ..train.optim import TrainArgs

        steps, lr = {"pretrain": (self.pretrain_steps, self.lr), "domain": (self.domain_steps, self.domain_lr),
                     "task": (self.finetune_steps, self.finetune_lr)}[stage]
        return TrainArgs(out_dir=None if out is None else str(out), max_steps=steps, schedule_steps=steps, lr=lr,
                         warmup_steps=min(self.warmup_steps, max(steps // 10, 1)), min_lr_ratio=self.min_lr_ratio,
                         weight_decay=self.weight_decay, eval_every=0, eval_at_end=stage == "pretrain",
                         save_every=max(steps // 4, 1), resume="auto",
                         seed=seed, progress=False, device="cpu", precision=self.precision)


def default_corpus() -> str:
    from .growth_config import default_corpus as growth_default

    return growth_default()


def full_config(**changes: Any) -> GMAPBenchConfig:
    """The committed run (not yet run at full size in this commit): d = 128, L = 4, 4 heads, vocab 2048, context
    128 (1.38M parameters, 0.52M of them the untied embeddings), G-MAP layers 1 and 3 (chunks 0-1 and 2-3); the
    general model pretrained once for 800 steps × 16 × 128 tokens (1.6M tokens) on the first 16 MB of the books;
    per (arm, seed) 200 domain steps (16 × 128 tokens: 0.41M of the 1.3M domain tokens) at lr 1e-3 and 200
    fine-tuning steps (32 sentences, at most 64 tokens) at lr 1.5e-3 (the general arm of the probe below reached
    64.6% dev accuracy at 5e-4, 68.1% at 1.5e-3); 6 arms × 3 seeds.

    Sizing, from short timed probes on this 2-core machine (one thread, bf16 autocast; CPU time per step, which
    is what an idle core gives — the machine's load average was 6-7 from other runs): a domain step of DAPT
    0.25 s, of G-MAP 0.33-0.36 s (the frozen forward and the memory attention); a fine-tuning step at 32 × 40
    tokens 0.155 s (G-MAP 0.24 s), and real SST-2 batches pad to ≈ 58 tokens on average (the longest of 32
    sentences, capped at 64), ≈ 0.22 s (G-MAP ≈ 0.34 s). Per seed: general 200 × 0.22 + DAPT 200 × 0.47 + four
    G-MAP arms × 200 × 0.685 ≈ 11.4 min; × 3 seeds over two workers (+15% for two workers sharing the memory
    bus) ≈ 20 min; per-job overhead (SST-2 encoding, evaluations, checkpoints: ≈ 10 s × 18 over two workers)
    1.5 min; pretraining 800 × 0.25 s on two threads ≈ 2.5 min; data preparation (tokenizer on 16 MB of books,
    two token stores: 45 s for 4 MB at load 7) ≈ 2 min: ≈ 26 min in all. A one-seed probe at this shape
    (pretraining 300 steps on 4 MB, load 7, niced) took 106 s for the general arm, 110 + 92 s for DAPT and
    165 + 149 s for G-MAP chunk-gated (domain + fine-tuning wall time): G-MAP costs ≈ 1.55× DAPT at equal
    trainable steps. Its numbers (one seed, fine-tuning lr 5e-4; no verdict): dev accuracy general 64.6%, DAPT
    67.3%, G-MAP chunk-gated 67.4%; forgetting DAPT +1.61 nats, G-MAP +1.58 (the books' held-out loss 4.94 before
    adaptation); domain loss 6.38 -> 4.17 (DAPT), 4.20 (G-MAP)."""
    cfg = GMAPBenchConfig(profile="full", corpus=default_corpus(), max_bytes=16_000_000)
    return dataclasses.replace(cfg, **changes)


def quick_config(**changes: Any) -> GMAPBenchConfig:
    """One seed at a small size, every arm: a smoke test of the whole pipeline, not a measurement."""
    cfg = GMAPBenchConfig(profile="quick", corpus=default_corpus(), max_bytes=1_000_000, vocab_size=512, seq_len=64,
                          batch_size=8, eval_batches=2, d_model=32, n_layers=2, n_heads=2, gmap_layers="0,1",
                          pretrain_steps=20, domain_steps=6, finetune_steps=6, warmup_steps=2,
                          finetune_batch_size=16, finetune_max_len=32, task_train_subset=2000, seeds=[0])
    return dataclasses.replace(cfg, **changes)


def ci_config(**changes: Any) -> GMAPBenchConfig:
    """The CI profile (tests/test_bench_gmap.py): like --quick, smaller still, on whatever data the test gives."""
    cfg = quick_config(profile="test", max_bytes=200_000, vocab_size=300, seq_len=32, batch_size=4, eval_batches=1,
                       pretrain_steps=4, domain_steps=3, finetune_steps=3, finetune_batch_size=8, finetune_max_len=16,
                       task_train_subset=64)
    return dataclasses.replace(cfg, **changes)


# ------------------------------------------------------------------------------------------------- data
def default_work_dir() -> Path:
    return bench_work_dir("gmap-bench")


def results_path(cfg: GMAPBenchConfig) -> Path:
    """benchmarks/results/gmap.json (``$MORPHLM_RESULTS`` moves the folder); gmap-quick.json / gmap-test.json for
    the small profiles."""
    return results_file("gmap", cfg.profile)


# ------------------------------------------------------------------------------------------------- runs
def _stage(spec, out: Path, what: str) -> dict[str, Any]:
    """Run one training stage (``train_run``; resumes ``out`` when a previous run was cut short) unless ``out``
    already holds its finished record (``stage.json``); returns that record."""
    from ..io import write_atomic
    from ..train.run import train_run

    done = out / "stage.json"
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    with interruptible(what, f"{out} holds its state — rerun the same command to resume it"):
        res = train_run(spec)
    if res.steps < spec.train.max_steps:
        raise BenchError(f"{what} stopped at step {res.steps} of {spec.train.max_steps}; rerun to resume it")
    rec = {"steps": int(res.steps), "tokens": int(res.tokens), "flops": float(res.flops),
           "final_loss": res.final_loss, "wall_s": time.perf_counter() - t0, "precision": res.precision}
    if spec.model.head == "cls":  # dev accuracy of the final weights, measured here (also after a resumed run)
        rec.update(_dev_metrics(out, spec))
    write_atomic(done, json.dumps(rec))
    return rec


def _dev_metrics(run_dir: Path, spec) -> dict[str, float]:
    """Loss and accuracy of the classifier in ``run_dir`` on every sentence of the task's dev file."""
    import torch

    from ..data.tasks import ClassificationBatches, load_task
    from ..train import checkpoint as ckpt
    from ..train.loop import model_loss
    from ..train.steps import evaluate

    dev = load_task(spec.data.task_val, spec.data.task_val).val
    batches = ClassificationBatches(dev, dev, ckpt.open_tokenizer(run_dir), spec.data.batch_size,
                                    spec.data.seq_len).val_batches()
    m = evaluate(ckpt.load_model(run_dir), model_loss, batches, torch.device("cpu"), spec.train.precision)
    return {"val_loss": float(m["val_loss"]), "val_accuracy": float(m["val_accuracy"])}


def _fusion_weights(model) -> dict[str, float] | None:
    gmap = getattr(model, "gmap", None)
    if gmap is None:
        return None
    return {layer: float(f.fusion_weight.detach()) for layer, f in gmap.fusions.items()}


def pretrain_general(cfg: GMAPBenchConfig, work: Path) -> Path:
    """Train (or resume, or reuse) the shared general model; returns its checkpoint folder."""
    from ..train.run import DataSpec, RunSpec

    tokenizer, store = prepare_general_store(cfg, show_progress=False)
    key = "general-" + config_hash({"model": cfg.general_config().to_dict(), "args": asdict(cfg.train_args(
        "pretrain", 0)), "batch": [cfg.batch_size, cfg.seq_len, cfg.eval_batches, cfg.val_fraction],
        "data": store.meta["corpus_fingerprint"], "v": SCHEMA_VERSION})
    out = work / "general" / key
    data = DataSpec(corpus=cfg.corpus, max_bytes=cfg.max_bytes, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                    val_fraction=cfg.val_fraction, eval_batches=cfg.eval_batches)
    _stage(RunSpec(model=cfg.general_config(), data=data, train=cfg.train_args("pretrain", 0, out)), out,
           "the general model's pretraining")
    return out


def _arm_key(cfg: GMAPBenchConfig, arm: str, seed: int, general_key: str, domain_fp: str, task_fp: str) -> str:
    dom = cfg.domain_config(arm)
    relevant = {"domain": None if dom is None else dom.to_dict(), "task": cfg.task_config(arm).to_dict(),
                "args": [asdict(cfg.train_args(s, seed)) for s in ("domain", "task")], "general": general_key,
                "batch": [cfg.batch_size, cfg.seq_len, cfg.eval_batches, cfg.finetune_batch_size,
                          cfg.finetune_max_len, cfg.domain_val_fraction], "data": [domain_fp, task_fp],
                "v": SCHEMA_VERSION}
    return f"{arm}-s{seed}-{config_hash(relevant)}"


def run_arm(cfg: GMAPBenchConfig, arm: str, seed: int, work: Path, ctx: dict[str, Any]) -> dict[str, Any]:
    """One (arm, seed): domain stage (not for ``general``), its general-domain and domain losses, fine-tuning and
    dev accuracy; cached, and the run folders removed once the record is cached. ``ctx``: the general model's
    folder and losses, the domain corpus and the task files (from :func:`_run`)."""
    from ..data import TokenStore
    from ..train import checkpoint as ckpt
    from ..train.run import DataSpec, RunSpec

    general = Path(ctx["general_dir"])
    key = _arm_key(cfg, arm, seed, general.name, ctx["domain_fp"], ctx["task_fp"])
    cache = ResultCache(work / "arms")
    hit = cache.load(key)
    if hit is not None:
        return hit
    t0 = time.perf_counter()
    run = work / "runs" / key
    dom_cfg = cfg.domain_config(arm)
    domain = None
    init = general
    if dom_cfg is not None:
        data = DataSpec(corpus=ctx["domain_path"], max_bytes=None, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                        val_fraction=cfg.domain_val_fraction, eval_batches=cfg.eval_batches)
        spec = RunSpec(model=dom_cfg, data=data, train=cfg.train_args("domain", seed, run / "domain"),
                       init=str(general), gmap_memory=str(general) if dom_cfg.gmap_layer_ids else None)
        domain = _stage(spec, run / "domain", f"{arm} seed {seed} (domain stage)")
        model = ckpt.load_model(run / "domain")  # a G-MAP model re-opens its frozen general model
        domain["general_val_loss"] = lm_val_loss(model, TokenStore.open(ctx["books_store"]), cfg)
        domain["domain_val_loss"] = lm_val_loss(model, TokenStore.open(ctx["domain_store"]), cfg)
        domain["fusion_weights"] = _fusion_weights(model)
        init = run / "domain"
    train_file, dev_file = ctx["task_files"]
    data = DataSpec(seq_len=cfg.finetune_max_len, batch_size=cfg.finetune_batch_size, task_train=train_file,
                    task_val=dev_file)
    task = _stage(RunSpec(model=cfg.task_config(arm), data=data, train=cfg.train_args("task", seed, run / "task"),
                          init=str(init)), run / "task", f"{arm} seed {seed} (fine-tuning)")
    gen_loss = ctx["general_val_loss"] if domain is None else domain["general_val_loss"]
    record = {"arm": arm, "seed": seed, "key": key, "dev_accuracy": task["val_accuracy"], "dev_loss": task["val_loss"],
              "general_val_loss": gen_loss, "forgetting": gen_loss - ctx["general_val_loss"],
              "domain_val_loss": ctx["general_domain_val_loss"] if domain is None else domain["domain_val_loss"],
              "fusion_weights": None if domain is None else domain["fusion_weights"],
              "stages": {"domain": domain, "task": task},
              "wall_s": (0.0 if domain is None else domain["wall_s"]) + task["wall_s"],
              "flops": (0.0 if domain is None else domain["flops"]) + task["flops"],
              "job_wall_s": time.perf_counter() - t0}
    cache.store(key, record, f"{arm} seed {seed}")
    shutil.rmtree(run, ignore_errors=True)
    return record


def job(payload: dict[str, Any]) -> dict[str, Any]:
    """Worker entry point (:func:`morphlm.bench.runner.run_jobs`): one (arm, seed) from plain data."""
    worker_setup()
    cfg = GMAPBenchConfig(**payload["cfg"])
    return guarded_job(lambda: run_arm(cfg, payload["name"], payload["seed"], Path(payload["work"]),
                                       payload["ctx"]))


# ------------------------------------------------------------------------------------------------- analysis
def analyse(runs: dict[str, dict[int, dict]]) -> dict[str, dict[str, Any]]:
    """Per arm over seeds (mean ± sample std): dev accuracy in points, the paired per-seed difference to DAPT,
    general-domain loss and forgetting, domain loss, wall time and FLOPs per stage."""
    dapt = runs.get("dapt", {})
    out: dict[str, dict[str, Any]] = {}
    for arm, by in runs.items():
        recs = [by[s] for s in sorted(by)]
        acc = mean_std([100.0 * r["dev_accuracy"] for r in recs])
        diff = mean_std([100.0 * (by[s]["dev_accuracy"] - dapt[s]["dev_accuracy"]) for s in sorted(by) if s in dapt])
        gl = mean_std([r["general_val_loss"] for r in recs])
        fg = mean_std([r["forgetting"] for r in recs])

        def stage_mean(stage: str, what: str):
            return mean_std([r["stages"][stage][what] for r in recs if r["stages"][stage] is not None])["mean"]

        out[arm] = {"seeds": sorted(by), "dev_accuracy": acc["mean"], "dev_accuracy_std": acc["std"],
                    "dev_accuracy_per_seed": [100.0 * r["dev_accuracy"] for r in recs],
                    "minus_dapt": None if arm == "dapt" else diff["mean"],
                    "minus_dapt_std": None if arm == "dapt" else diff["std"],
                    "general_val_loss": gl["mean"], "general_val_loss_std": gl["std"],
                    "forgetting": fg["mean"], "forgetting_std": fg["std"],
                    "domain_val_loss": mean_std([r["domain_val_loss"] for r in recs])["mean"],
                    "wall_s_domain": stage_mean("domain", "wall_s"), "wall_s_task": stage_mean("task", "wall_s"),
                    "flops_domain": stage_mean("domain", "flops"), "flops_task": stage_mean("task", "flops"),
                    "wall_s": mean_std([r["wall_s"] for r in recs])["mean"],
                    "flops": mean_std([r["flops"] for r in recs])["mean"]}
    return out


def summarise(arms: dict[str, dict[str, Any]], seeds: list[int], n_dev: int = 872) -> dict[str, Any]:
    """The summary keys (:data:`SUMMARY_KEYS`), the per-fusion detail, the goal (:data:`GOALS`) and its notes
    (``n_dev``: dev sentences, for the size of one sentence in points)."""
    dapt = arms.get("dapt")
    per = {f: arms[f"gmap-{f}"]["minus_dapt"] for f in FUSIONS if f"gmap-{f}" in arms}
    forg = {f: arms[f"gmap-{f}"]["forgetting"] for f in FUSIONS if f"gmap-{f}" in arms}
    measured = {f: v for f, v in per.items() if v is not None}
    best = max(measured, key=measured.get) if measured else None
    f_dapt = None if dapt is None else dapt["forgetting"]
    s: dict[str, Any] = {
        "gmap_minus_dapt": None if best is None else per[best], "forgetting_dapt": f_dapt,
        "forgetting_gmap": None if best is None else forg[best], "seeds": len(seeds), "best_fusion": best,
        "detail": {"gmap_minus_dapt_per_fusion": per, "forgetting_gmap_per_fusion": forg,
                   "gmap_minus_dapt_std_per_fusion": {f: arms[f"gmap-{f}"]["minus_dapt_std"] for f in per},
                   "dev_accuracy": {a: m["dev_accuracy"] for a, m in arms.items()}},
    }
    notes: dict[str, str] = {}

    def met(f: str) -> bool | None:
        if per.get(f) is None or forg.get(f) is None or f_dapt is None:
            return None
        return per[f] >= 0.5 and forg[f] < f_dapt

    if best is None or f_dapt is None:
        notes[GOAL] = "not measurable: the DAPT or G-MAP runs are missing"
        goal = None
    else:
        goal = met(best)
        std = arms[f"gmap-{best}"]["minus_dapt_std"]
        notes[GOAL] = (f"best fusion {best} picked by the same dev accuracy it is judged on (optimistic); its paired "
                       f"difference {per[best]:+.2f} ± {std if std is not None else float('nan'):.2f} points over "
                       f"{len(seeds)} seed(s); one of the {n_dev} dev sentences is {100 / n_dev:.3f} points")
    s["goals"] = {GOAL: goal, "per_fusion": {f: met(f) for f in per}}
    s["goal_notes"] = notes
    return s


# ------------------------------------------------------------------------------------------------- plot and table
def plot_results(results: dict[str, Any], png: str | Path) -> Path:
    """Two panels, one bar per arm with the seeds' sample std as error bar and the seeds as dots: SST-2 dev accuracy
    and forgetting (general-domain loss after adaptation minus the general model's)."""
    plt = pyplot()

    arms = results["arms"]
    names = [a for a in ARMS if a in arms]
    colors = ["tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]
    fig, (ax_a, ax_f) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    xs = range(len(names))
    for ax, key, label in ((ax_a, "dev_accuracy", "SST-2 dev accuracy (%)"),
                           (ax_f, "forgetting", "forgetting: general-domain loss − general model's (nats)")):
        means = [arms[a][key] or 0.0 for a in names]
        errs = [arms[a][f"{key}_std"] or 0.0 for a in names]
        ax.bar(xs, means, yerr=errs, capsize=4, color=colors[:len(names)], alpha=0.8)
        for i, a in enumerate(names):
            vals = (arms[a]["dev_accuracy_per_seed"] if key == "dev_accuracy" else
                    [r["forgetting"] for r in results["runs"][a].values()])
            ax.scatter([i] * len(vals), vals, color="black", s=10, zorder=3)
        ax.set_xticks(list(xs), [a.replace("gmap-", "G-MAP\n") for a in names], fontsize=8)
        ax.set_ylabel(label, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    lo = min(min(arms[a]["dev_accuracy_per_seed"]) for a in names)
    ax_a.set_ylim(max(0.0, lo - 5.0), None)
    s, c = results["summary"], results["config"]
    gm = s["gmap_minus_dapt"]
    fig.suptitle(f"G-MAP benchmark: d={c['d_model']}, L={c['n_layers']}, {c['domain_steps']} domain + "
                 f"{c['finetune_steps']} fine-tuning steps, {s['seeds']} seed(s); best fusion {s['best_fusion']}: "
                 f"{'–' if gm is None else format(gm, '+.2f')} points vs DAPT", fontsize=9)
    fig.tight_layout()
    return save_plot(fig, png)


def markdown_table(results: dict[str, Any]) -> str:
    """The README table of a results dict (or a loaded results JSON)."""
    s, arms = results["summary"], results["arms"]
    if not isinstance(arms, dict) or "dapt" not in arms:
        raise BenchError("the results have no DAPT arm; is this a `morphlm bench gmap` result?")
    lines = ["| arm | SST-2 dev acc % | − DAPT (paired, points) | general val loss | forgetting | domain val loss | "
             "wall s (adapt + fine-tune) | TFLOPs |", "|---|---|---|---|---|---|---|---|"]
    for arm in ARMS:
        if arm not in arms:
            continue
        m = arms[arm]
        wall = f"{_f(m['wall_s_domain'], '.0f')} + {_f(m['wall_s_task'], '.0f')}"
        diff = "–" if arm == "dapt" else f"{_f(m['minus_dapt'], '+.2f')} ± {_f(m['minus_dapt_std'], '.2f')}"
        lines.append(f"| {arm} | {_f(m['dev_accuracy'], '.2f')} ± {_f(m['dev_accuracy_std'], '.2f')} | {diff}"
                     f" | {_f(m['general_val_loss'])} | {_f(m['forgetting'], '+.3f')} ± {_f(m['forgetting_std'])} | "
                     f"{_f(m['domain_val_loss'])} | {wall} | {_f(m['flops'] / 1e12 if m['flops'] else None, '.2f')} |")
    g, c = results.get("general", {}), results["config"]
    goal = s["goals"][GOAL]
    goal_txt = "not measurable" if goal is None else ("met" if goal else "missed")
    lines += ["", f"{s['seeds']} seed(s); general model (books val loss {_f(g.get('general_val_loss'))}, domain val "
                  f"loss {_f(g.get('domain_val_loss'))}) shared by every arm; d={c['d_model']}, L={c['n_layers']}, "
                  f"G-MAP layers {c['gmap_layers']}; {c['domain_steps']} domain + {c['finetune_steps']} fine-tuning "
                  f"steps per arm. Goal (G-MAP ≥ DAPT + 0.5 points with less forgetting, best fusion "
                  f"{s['best_fusion']}: {_f(s['gmap_minus_dapt'], '+.2f')} points, forgetting "
                  f"{_f(s['forgetting_gmap'], '+.3f')} vs DAPT {_f(s['forgetting_dapt'], '+.3f')}): {goal_txt}. "
                  f"{s['goal_notes'].get(GOAL, '')}. " + provenance_note(results)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- the benchmark
def run_benchmark(cfg: GMAPBenchConfig, *, out_json: str | Path | None = None, work_dir: str | Path | None = None,
                  workers: int | None = None, plot: bool = True) -> dict[str, Any]:
    """Run (or resume) the benchmark and write the results JSON (+ plot next to it); returns the results. A Ctrl-C /
    SIGTERM stops it with :class:`~morphlm.bench.runner.BenchInterrupted` and writes no results; rerun to continue."""
    cfg.validate()
    with STOP:
        return _run(cfg, out_json=out_json, work_dir=work_dir, workers=workers, plot=plot)


def _general_losses(cfg: GMAPBenchConfig, general: Path, books, domain_store, work: Path) -> dict[str, float]:
    def measure() -> dict[str, float]:
        from ..train import checkpoint as ckpt

        model = ckpt.load_model(general)
        return {"general_val_loss": lm_val_loss(model, books, cfg), "domain_val_loss": lm_val_loss(model, domain_store,
                                                                                                    cfg)}

    key = f"losses-{general.name}-" + config_hash([domain_store.meta["corpus_fingerprint"], cfg.eval_batches,
                                                   cfg.domain_val_fraction, cfg.batch_size, cfg.seq_len])
    return ResultCache(work / "measurements").get_or_run(key, measure, "the general model's evaluation")


def _run(cfg: GMAPBenchConfig, *, out_json, work_dir, workers, plot) -> dict[str, Any]:
    import torch

    from ..train.steps import resolve_precision
    from .common import metadata, usable_cores, write_results

    work = Path(work_dir) if work_dir is not None else default_work_dir()
    out_json = Path(out_json) if out_json is not None else results_path(cfg)
    t0 = time.perf_counter()
    check_task_files(cfg)  # bad data folders fail here, before anything is written
    _, domain_stats = domain_sentences(cfg)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer, books = prepare_general_store(cfg)
    domain_path, _ = write_domain_corpus(cfg, work)
    domain_store = prepare_domain_store(cfg, domain_path, tokenizer)
    train_file, dev_file = task_files(cfg, work)
    from ..data.tasks import load_task_file

    n_dev = len(load_task_file(dev_file))
    if workers is None:
        workers = min(usable_cores(), 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(workers, 1))  # nothing else runs while the general model trains
    try:
        t_pre = time.perf_counter()
        general = pretrain_general(cfg, work)
        pretrain_wall = time.perf_counter() - t_pre
    finally:
        torch.set_num_threads(threads)
    losses = _general_losses(cfg, general, books, domain_store, work)
    ctx = {"general_dir": str(general), "domain_path": str(domain_path), "books_store": str(books.path),
           "domain_store": str(domain_store.path), "task_files": [str(train_file),
           str(dev_file)], "domain_fp": domain_store.meta["corpus_fingerprint"],
           "task_fp": config_hash([[Path(f).name, Path(f).stat().st_size] for f in (train_file, dev_file)]),
           "general_val_loss": losses["general_val_loss"], "general_domain_val_loss": losses["domain_val_loss"]}
    outcomes = Outcomes()
    jobs = [{"name": a, "seed": s, "cfg": asdict(cfg), "work": str(work), "ctx": ctx} for s in cfg.seeds
            for a in sorted(ARMS, key=lambda a: a == "general")]  # the cheap arm last: the pool ends evenly
    run_jobs(jobs, job, workers=workers, desc="gmap bench: arms", on_done=outcomes.collect)
    runs, failures = outcomes.runs, outcomes.failures
    if "dapt" not in runs:
        raise BenchError(f"the DAPT runs failed ({failures}); every G-MAP difference is measured against them")
    runs = {a: runs[a] for a in ARMS if a in runs}
    arm_stats = analyse(runs)
    general_stage = json.loads((general / "stage.json").read_text(encoding="utf-8"))
    results = {
        "benchmark": "gmap", "schema_version": SCHEMA_VERSION, **metadata(),
        "precision": resolve_precision(torch.device("cpu"), cfg.precision),
        "summary": summarise(arm_stats, cfg.seeds, n_dev), "goals": GOALS,
        "protocol": {
            "general_model": "pretrained once on the books (seed 0), shared by every arm and seed",
            "split": "general: train/validation by whole books; domain: by sentence",
            "domain_corpus": "SST-2 training sentences (sst2-sentences/stsa.binary.train, glue-sst2/train.tsv), "
                             "labels dropped, deduplicated, dev sentences removed",
            "equal_steps": "DAPT and every G-MAP arm: the same domain steps on the same batches within a seed; every "
                           "arm the same fine-tuning steps on the same batches within a seed",
            "classification": "--head cls (pooled first token), fine-tuned bidirectionally (causal=False) from the "
                              "causal LM's weights; G-MAP keeps its frozen memory while fine-tuning",
            "accuracy": "SST-2 dev (glue-sst2/dev.tsv, every sentence) after the last fine-tuning step",
            "forgetting": "general-domain (held-out books) loss after domain adaptation minus the general model's; "
                          "G-MAP's with its memory",
            "differences": "paired per seed (G-MAP − DAPT), mean ± sample std over seeds, in points",
            "compute": "wall time and FLOPs per stage (a stage resumed after a stop records the wall time of its "
                       "last part); G-MAP's FLOPs include the frozen model's forward"},
        "config": {**asdict(cfg), "general_model": cfg.general_config().to_dict(),
                   "domain_tokens_per_arm": cfg.domain_steps * cfg.batch_size * cfg.seq_len,
                   "pretrain_tokens": cfg.pretrain_steps * cfg.batch_size * cfg.seq_len, "workers": workers},
        "data": {"corpus": cfg.corpus, "vocab_size": tokenizer.vocab_size,
                 **store_meta(books),
                 "domain": {**domain_stats, **{k: domain_store.meta.get(k) for k in ("n_train_tokens",
                                                                                      "n_val_tokens")}},
                 "task": {"train": str(train_file), "dev": str(dev_file), "n_dev": n_dev,
                          "train_subset": cfg.task_train_subset}},
        "general": {**losses, "steps": general_stage["steps"], "flops": general_stage["flops"],
                    "wall_s": pretrain_wall, "stage_wall_s": general_stage["wall_s"]},
        "arm_descriptions": dict(ARMS), "arms": arm_stats,
        "runs": {a: {str(s): r for s, r in sorted(by.items())} for a, by in runs.items()},
        "failures": failures, "wall_s": time.perf_counter() - t0,
    }
    return write_results(out_json, results, plot_results if plot else None)
