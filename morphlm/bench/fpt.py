"""FPT benchmark: plain prompt tuning vs progressive (FPT) prompt tuning of one frozen model on SST-2.

Protocol (FPT: Huang et al., "FPT: Improving Prompt Tuning Efficiency via Progressive Training", Findings
of EMNLP 2022; saving = 1 - C_method / C_reference as in LiGO, Wang et al. 2023, arXiv 2303.00980):

1. Pretrain a small causal LM (or ``--objective mlm``) on real text through ``morphlm.train.run`` — or
   take ``--model DIR``. Default corpus ``task``: the task's *unlabelled* training sentences (in-domain
   text, labels never seen; ``--corpus gutenberg`` uses the public-domain books in the data folder's
   ``gutenberg/``: ``$MORPHLM_DATA``, default ../shared/data, see :func:`morphlm.data.paths.data_dir`).
   The pretrained model is cached under ``$MORPHLM_CACHE/bench-fpt/`` and reused; its cost is reported apart.
2. For each seed, tune a 20-vector prompt on the frozen model with the same data order, optimizer and step
   budget: *plain* (the full model throughout) and *FPT* (compound partial models at 1/4, 1/2, 3/4 of the
   layers and FFN neurons, 1/5 of the steps each, then the full model; the prompt is recycled).
3. Every ``eval_every`` steps the prompt is evaluated *on the full model* on the SST-2 dev set (for FPT
   too: a prompt is only useful if it works on the full model).
4. Target = plain prompt tuning's final dev accuracy (per seed). Reported per seed and as mean ± std: the
   training FLOPs (ruler: morphlm/train/flops.py; convention in morphlm/grow/prompt_tuning.py) and training wall time
   (evaluation excluded) each arm needs to first reach the target, saving = 1 − C_fpt / C_plain and
   speedup = C_plain / C_fpt − 1; an arm that never reaches it is reported as such (saving None).

Sizes: ``full`` (default, < 15 min on an idle 2-core machine), ``quick`` (< 90 s), ``tiny`` (seconds, tests).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

from .common import RESULTS_DIR, metadata, write_json
from .stats import mean_std

log = logging.getLogger("morphlm.bench.fpt")

SIZES: dict[str, dict[str, Any]] = {
    "full": dict(d_model=128, n_layers=4, n_heads=4, vocab_size=2048, seq_len=64, pre_steps=400, pre_batch=32,
                 pre_lr=2e-3, max_bytes=4_000_000, steps=300, batch_size=32, eval_every=30, max_val=None,
                 max_train=None, max_len=64, prompt_len=20, lr=3e-2, seeds=3),
    "quick": dict(d_model=64, n_layers=4, n_heads=4, vocab_size=1024, seq_len=64, pre_steps=100, pre_batch=32,
                  pre_lr=3e-3, max_bytes=1_000_000, steps=60, batch_size=16, eval_every=10, max_val=200,
                  max_train=4000, max_len=48, prompt_len=20, lr=3e-2, seeds=1),
    "tiny": dict(d_model=32, n_layers=4, n_heads=2, vocab_size=300, seq_len=32, pre_steps=4, pre_batch=8,
                 pre_lr=3e-3, max_bytes=60_000, steps=10, batch_size=8, eval_every=5, max_val=24,
                 max_train=200, max_len=24, prompt_len=4, lr=3e-2, seeds=1),
}
# SST-2: 0 = negative, 1 = positive. With a 2048-token BPE " terrible" is split (" terri"); "bad"/"good"
# are single tokens and gave the frozen bench model's only (weak) zero-shot signal (dev AUC 0.54 vs <0.5).
LABEL_WORDS = ["bad", "good"]


def task_text_corpus(task_train: Path) -> Path:
    """The task's training texts without their labels, one JSONL document each (deduplicated), cached:
    in-domain *unlabelled* pretraining text (domain-adaptive pretraining; no label is ever seen)."""
    from ..data import default_cache_dir, load_task_file
    from ..io import write_atomic

    raw = Path(task_train).read_bytes()
    out = default_cache_dir() / "bench-fpt" / f"text-{hashlib.sha256(raw).hexdigest()[:16]}.jsonl"
    if not out.is_file():
        seen: dict[str, None] = {}
        for e in load_task_file(task_train):
            for t in (e.text, e.text_pair):
                if t and t.strip():
                    seen.setdefault(t.strip(), None)
        write_atomic(out, "".join(json.dumps({"text": t}) + "\n" for t in seen))
    return out


def resolve_corpus(corpus: str | None, task_train: Path) -> str:
    """``task`` (default): the task's unlabelled training texts; ``gutenberg``: the data folder's gutenberg/
    (:func:`morphlm.data.paths.data_dir`; else the ``shakespeare`` corpus); anything else is passed to the
    corpus loader as it is."""
    if corpus in (None, "task"):
        return str(task_text_corpus(task_train))
    if corpus == "gutenberg":
        from ..data.paths import data_dir

        g = data_dir() / "gutenberg"
        return str(g) if g.is_dir() else "shakespeare"
    return corpus


def pretrain(size: dict[str, Any], objective: str, corpus: str, progress: bool = True) -> tuple[Path, float]:
    """Pretrain (or reuse from the cache) the frozen model; returns (checkpoint dir, wall seconds spent now)."""
    from ..data import default_cache_dir
    from ..train import checkpoint as ckpt
    from ..train.run import build_spec, train_run

    if objective not in ("causal", "mlm"):
        raise ValueError(f"objective={objective!r}; choose causal or mlm")
    preset = "tiny" if objective == "causal" else "tiny-bert"
    overrides = dict(d_model=size["d_model"], n_layers=size["n_layers"], n_heads=size["n_heads"], n_kv_heads=size["n_heads"],
                     vocab_size=size["vocab_size"], max_seq_len=max(128, size["seq_len"]), seq_len=size["seq_len"],
                     batch_size=size["pre_batch"], max_steps=size["pre_steps"], lr=size["pre_lr"],
                     warmup_steps=max(1, size["pre_steps"] // 15), corpus=corpus, max_bytes=size["max_bytes"],
                     eval_every=0, progress=progress, device="cpu", precision="fp32")
    key = hashlib.sha256(json.dumps([preset, sorted(overrides.items())], default=str).encode()).hexdigest()[:16]
    out = default_cache_dir() / "bench-fpt" / f"{objective}-{key}"
    if ckpt.has_checkpoint(out) and ckpt.has_trainer_state(out):
        trainer = ckpt.read_trainer_json(out) or {}
        if trainer.get("step") == size["pre_steps"]:
            log.info("reusing the pretrained model in %s", out)
            return out, 0.0
    t0 = time.perf_counter()
    spec = build_spec(preset, overrides={**overrides, "out_dir": str(out), "resume": "auto"})
    train_run(spec)
    return out, time.perf_counter() - t0


def _load_task(task_train: Path, task_val: Path, max_train: int | None, seed: int):
    from ..data import load_task

    task = load_task(task_train, task_val)
    if max_train is not None and len(task.train) > max_train:
        rng = random.Random(seed)
        task.train = rng.sample(task.train, max_train)
    return task


def _ms(values: list[float | None]) -> tuple[float | None, float | None]:
    """(mean, std) over seeds by the benchmarks' one policy (:func:`morphlm.bench.stats.mean_std`)."""
    ms = mean_std(values)
    return ms["mean"], ms["std"]


def run(size: str = "full", seeds: int | None = None, model_dir: str | Path | None = None, objective: str = "causal",
        corpus: str | None = None, task_train: str | Path | None = None, task_val: str | Path | None = None,
        out: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the benchmark; writes the results JSON (+ a PNG plot next to it) and returns the results dict."""
    from ..data.paths import DATA_ENV, data_dir
    from ..grow.fpt import prompt_tune
    from ..grow.prompt_tuning import FLOPS_CONVENTION, PromptTuneConfig, cost_to_reach
    from ..train import checkpoint as ckpt

    if size not in SIZES:
        raise ValueError(f"size={size!r}; choose one of {sorted(SIZES)}")
    sz = dict(SIZES[size])
    n_seeds = int(seeds or sz["seeds"])
    if n_seeds < 1:
        raise ValueError(f"seeds={n_seeds} must be >= 1")
    sst = data_dir() / "glue-sst2"
    task_train = Path(task_train) if task_train else sst / "train.tsv"
    task_val = Path(task_val) if task_val else sst / "dev.tsv"
    for what, p in (("--task-train", task_train), ("--task-val", task_val)):
        if not p.is_file():
            raise FileNotFoundError(f"{what} {p} does not exist; pass SST-2 (or another task's) TSV files, e.g. "
                                    f"glue-sst2/train.tsv and dev.tsv of the data folder (set {DATA_ENV} to it)")
    corpus = resolve_corpus(corpus, task_train)
    t_start = time.perf_counter()
    pre_s = 0.0
    if model_dir is None:
        model_dir, pre_s = pretrain(sz, objective, corpus, progress)
    lm, tok, _ = ckpt.open_checkpoint(model_dir, need_tokenizer="the benchmark needs the model's tokenizer")
    task = _load_task(task_train, task_val, sz["max_train"], 0)
    words = LABEL_WORDS if task.n_classes == 2 else None

    per_seed, curves = [], []
    for seed in range(n_seeds):
        arms = {}
        for arm, progressive in (("plain", False), ("fpt", True)):
            cfg = PromptTuneConfig(prompt_len=sz["prompt_len"], steps=sz["steps"], lr=sz["lr"],
                                   batch_size=sz["batch_size"], max_len=sz["max_len"], eval_every=sz["eval_every"],
                                   seed=seed, label_words=words, progressive=progressive, partial="compound",
                                   fractions=(0.25, 0.5, 0.75), max_val=sz["max_val"])
            log.info("seed %d: %s prompt tuning", seed, arm)
            arms[arm] = prompt_tune(lm, tok, task, cfg, progress=progress)
        plain, fpt = arms["plain"], arms["fpt"]
        target = plain.final["val_accuracy"]
        reach_p = cost_to_reach(plain.history, target)
        reach_f = cost_to_reach(fpt.history, target)
        rec: dict[str, Any] = {
            "seed": seed, "target_accuracy": target,
            "plain": {"final_accuracy": target, "total_flops": plain.flops, "total_train_time_s": plain.train_time_s,
                      "flops_to_target": reach_p["flops"], "time_to_target_s": reach_p["train_time_s"],
                      "step_to_target": reach_p["step"]},
            "fpt": {"final_accuracy": fpt.final["val_accuracy"], "total_flops": fpt.flops,
                    "total_train_time_s": fpt.train_time_s, "reached": reach_f is not None,
                    "flops_to_target": reach_f["flops"] if reach_f else None,
                    "time_to_target_s": reach_f["train_time_s"] if reach_f else None,
                    "step_to_target": reach_f["step"] if reach_f else None, "stages": fpt.stages},
        }
        if reach_f:
            rec["flops_saving"] = 1 - reach_f["flops"] / reach_p["flops"]
            rec["flops_speedup"] = reach_p["flops"] / reach_f["flops"] - 1
            rec["wall_saving"] = 1 - reach_f["train_time_s"] / max(reach_p["train_time_s"], 1e-9)
        else:
            rec["flops_saving"] = rec["flops_speedup"] = rec["wall_saving"] = None
        rec["flops_saving_vs_plain_total"] = (1 - reach_f["flops"] / plain.flops) if reach_f else None
        per_seed.append(rec)
        curves.append({"seed": seed, "plain": plain.history, "fpt": fpt.history})

    fs, fs_sd = _ms([r["flops_saving"] for r in per_seed])
    ws, ws_sd = _ms([r["wall_saving"] for r in per_seed])
    ft, ft_sd = _ms([r["flops_saving_vs_plain_total"] for r in per_seed])
    pa, pa_sd = _ms([r["target_accuracy"] for r in per_seed])
    fa, fa_sd = _ms([r["fpt"]["final_accuracy"] for r in per_seed])
    counts = [0] * task.n_classes
    n_val = len(task.val) if sz["max_val"] is None else min(sz["max_val"], len(task.val))
    for e in task.val[:n_val]:
        counts[e.label] += 1
    majority = max(counts) / max(n_val, 1)
    # A target within two binomial standard errors of the majority-class rate is reached by a (nearly) constant
    # answer or by evaluation noise: then no saving is meaningful, and the summary says so.
    margin = 2.0 * (majority * (1 - majority) / max(n_val, 1)) ** 0.5
    signal = pa is not None and pa > majority + margin
    cfg = lm.config
    result = {
        "benchmark": "fpt", "size": size, **metadata(),
        "summary": {
            "seeds": n_seeds,
            "fpt_reached": sum(r["fpt"]["reached"] for r in per_seed),
            "plain_final_accuracy_mean": pa, "plain_final_accuracy_std": pa_sd,
            "fpt_final_accuracy_mean": fa, "fpt_final_accuracy_std": fa_sd,
            "flops_saving_mean": fs, "flops_saving_std": fs_sd,
            "wall_saving_mean": ws, "wall_saving_std": ws_sd,
            "flops_saving_vs_plain_total_mean": ft, "flops_saving_vs_plain_total_std": ft_sd,
            "majority_class_accuracy": majority, "significance_margin": margin, "target_above_majority": signal,
            "fpt_wins": signal and fs is not None and fs > 0 and all(r["fpt"]["reached"] for r in per_seed),
            "note": ("" if signal else "plain prompt tuning's final dev accuracy is not significantly above the "
                     "majority-class rate (2 binomial standard errors): the frozen model gives the prompt no usable "
                     "signal at this size, so the FLOPs/wall 'savings' measure reaching chance level and say "
                     "nothing about FPT"),
            "paper": "FPT (Huang et al. 2022): T5-Large compound 70.87 vs 71.51 avg at 65% FLOPs / 70% wall",
        },
        "setup": {
            "model_dir": str(model_dir), "objective": objective, "corpus": corpus,
            "model": {k: cfg.to_dict()[k] for k in ("d_model", "n_layers", "n_heads", "d_ff", "vocab_size", "head")},
            "pretrain_wall_s_this_run": pre_s, "pretrain_flops": ckpt.total_flops(model_dir),
            "task_train": str(task_train), "task_val": str(task_val), "n_train": len(task.train),
            "n_val": len(task.val) if sz["max_val"] is None else min(sz["max_val"], len(task.val)),
            "label_words": words, "size": sz, "schedule": "compound 0.25/0.5/0.75 x steps/5 each, then full",
            "flops_convention": FLOPS_CONVENTION,
            "target": "plain prompt tuning's final dev accuracy (per seed); cost = first evaluation at or above it",
        },
        "per_seed": per_seed,
        "curves": curves,
        "wall_s": time.perf_counter() - t_start,
    }
    path = Path(out) if out else RESULTS_DIR / "fpt.json"
    plot = path.with_suffix(".png")
    try:
        _plot(curves, plot, majority)
        result["plot"] = str(plot)
    except Exception as exc:  # noqa: BLE001 - a missing plotting backend must not lose the numbers
        log.warning("could not write the plot %s: %s", plot, exc)
    write_json(path, result)
    result["path"] = str(path)
    return result


def _plot(curves: list[dict[str, Any]], path: Path, majority: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for c in curves:
        for arm, color in (("plain", "tab:blue"), ("fpt", "tab:orange")):
            h = c[arm]
            ax.plot([r["flops"] for r in h], [r["val_accuracy"] for r in h], color=color, alpha=0.8, marker=".",
                    label=f"{'plain PT' if arm == 'plain' else 'FPT (compound)'}" if c["seed"] == 0 else None)
    if majority is not None:
        ax.axhline(majority, color="gray", linestyle="--", linewidth=1, label="majority class")
    ax.set_xlabel("training FLOPs (forward + backward-to-input)")
    ax.set_ylabel("dev accuracy (full model + prompt)")
    ax.set_title("Prompt tuning on a frozen model: plain vs FPT")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
