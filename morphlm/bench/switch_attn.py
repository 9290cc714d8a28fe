"""The Switch Attention benchmark: ``morphlm bench switch-attn``.

Switch Attention (Zhao, Li, Wu et al., 2026; :mod:`morphlm.model.switch_attention`) is built by continual
pretraining from a full-attention model. This benchmark follows that recipe at CPU scale:

* **Pretraining, once** (shared by every seed and arm): a causal full-attention LM (SwiGLU, RMSNorm, RoPE) on the
  Gutenberg books, split by WHOLE BOOK into train and held-out books, at context ``seq_len`` (1024 in the full
  profile). Sharing it makes the arms' differences paired: every arm of every seed continues the same weights.
* **Continuation, per (arm, seed)**, the same number of tokens for every arm, and within a seed the same batches in
  the same order (``LMBatches`` seeded with the seed): Switch Attention at target full fractions
  ρ* ∈ ``fractions`` (default 0.1, 0.25, 0.5; window ``window``; the router starts as full attention, so each starts
  as the pretrained model), pure sliding-window attention of the same window, and full attention (the reference:
  it gets the same extra tokens, so "continued training" is not mistaken for "Switch Attention").

Measured per (arm, seed), all on the held-out books:

* ``val_loss``: next-token loss (nats/token) over every position, and ``val_loss_beyond_window`` over the positions
  t ≥ w (0-based) only — where the arms can differ at all (for t < w the window holds the whole prefix).
* ``retrieval``: next-token accuracy on the value tokens of a synthetic long-range retrieval probe
  (:func:`build_probe`): held-out text with a ``" key: value."`` statement inserted MORE than ``window`` tokens before
  a final ``" key:"`` query, the value tokens the targets (teacher forcing; argmax must equal the value token).
  Deterministic: a pure function of the held-out tokens, the tokenizer and the seed of the probe.
* ``full_fraction_per_layer``: the realised fraction of tokens at t ≥ w routed to full attention, per layer, over
  the held-out batches (the routers' hard gate); 1 for full attention, 0 for the sliding window.
* ``attn_flops_ratio``: forward attention FLOPs per token on the one ruler (:func:`morphlm.train.flops.
  attention_flops_per_token`, each token's real context, at the measured per-layer fractions) over full
  attention's at the same context.
* ``peak_train_bytes``: peak live CPU allocations during one training step (forward + backward at the training
  batch shape, the run's precision) as the PyTorch profiler's memory events record them (``profile_memory``),
  above what was allocated before the step (weights, optimizer state and batch are not counted).

Attention time (:func:`time_attention`): forward + backward of ONE layer's attention core — routing and both
branches, no projections — at the training batch size, the model's heads and head dimension and T =
``timing_seq_len`` (1024),
against full causal attention (SDPA) at the same shapes, median of ``timing_repeats`` single-threaded runs after a
warm-up; each Switch arm is timed with a routing at its measured mean full fraction (full-routed positions drawn
at random beyond the window), with the estimator the arms train with (``ratio_vs_full``, the summary's), and again
at its target fraction ρ* (``ratio_vs_full_at_target``: the cost of the kernel whether or not the routers reached
ρ*).

Over seeds: means and sample standard deviations; the loss gap is the PAIRED per-seed difference (arm − full).
Every (arm, seed) record and the pretrained model are cached (:class:`~morphlm.bench.runner.ResultCache`; the
runs checkpoint while they train), so a rerun of the same command resumes.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .common import (bench_work_dir, check_run_settings, prepare_store, pyplot, results_file, save_plot,
                     store_meta)
from .common import config_hash as _hash
from .runner import (STOP, BenchInterrupted, Outcomes, ResultCache, fit_run, guarded_job, run_jobs,  # noqa: F401
                     train_lm_arm, worker_setup)

log = logging.getLogger("morphlm.bench.switch_attn")

SCHEMA_VERSION = 1
PROBE_SEED = 1234
GOALS = {
    "loss_within_0.02_of_full": "loss_gap_vs_full (ρ* = 0.25, paired mean over seeds) <= 0.02 nats",
    "attn_flops_at_most_40pct": "attn_flops_ratio (ρ* = 0.25) <= 0.40",
    "attn_time_at_most_0.6x": "attn_time_ratio (ρ* = 0.25, T = 1024) <= 0.6",
    "retrieval_far_above_swa": "retrieval_switch - retrieval_swa >= 0.5 * (retrieval_full - retrieval_swa) > 0 "
                               "(Switch Attention recovers at least half of what the window loses)",
    "retrieval_close_to_full": "retrieval_switch >= retrieval_full - 0.05",
}


class BenchError(ValueError):
    """The benchmark cannot run with these settings; the message names the setting and the fix."""


def arm_name(fraction: float) -> str:
    return f"switch-{fraction:g}"


@dataclass
class SwitchBenchConfig:
    """Everything that shapes ``morphlm bench switch-attn``. The profiles below fill it."""

    profile: str = "full"  # full | quick | test
    corpus: str = "shakespeare"
    max_bytes: int | None = None
    val_fraction: float = 0.1  # held-out BOOKS (whole documents)
    vocab_size: int = 2048
    seq_len: int = 1024
    window: int = 128
    batch_size: int = 4
    eval_batches: int = 4
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    pretrain_steps: int = 400
    steps: int = 200  # continuation steps of every arm
    warmup_steps: int = 10
    lr: float = 2e-3
    continue_lr: float = 1e-3
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    eval_every: int = 50
    precision: str = "auto"
    fractions: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5])
    estimator: str = "one_branch"  # the efficient path: only the chosen branch is computed in training
    lambda_lr: float = 0.05
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    probe_samples: int = 32
    timing_seq_len: int = 1024
    timing_repeats: int = 5
    memory: bool = True

    def validate(self) -> None:
        check_run_settings(self, BenchError, curve=False)
        if not 1 <= self.window < self.seq_len:
            raise BenchError(f"window={self.window} must be at least 1 and smaller than seq_len={self.seq_len}; "
                             f"lower the window or raise seq_len")
        if not 1 <= self.window < self.timing_seq_len:
            raise BenchError(f"window={self.window} must be smaller than timing_seq_len={self.timing_seq_len}")
        if 0.25 not in self.fractions:
            raise BenchError(f"fractions={self.fractions}: the summary is taken at ρ* = 0.25; include 0.25")
        bad = [f for f in self.fractions if not 0.0 < f < 1.0]
        if bad:
            raise BenchError(f"fractions {bad}: a target full fraction must lie strictly between 0 and 1")
        if self.steps < 2 or self.pretrain_steps < 1 or not 1 <= self.eval_every <= self.steps:
            raise BenchError(f"steps={self.steps}, pretrain_steps={self.pretrain_steps}, eval_every="
                             f"{self.eval_every}: need steps >= 2, pretrain_steps >= 1, 1 <= eval_every <= steps")
        if self.probe_samples < 1:
            raise BenchError(f"probe_samples={self.probe_samples}: need at least 1")
        if self.estimator not in ("one_branch", "two_branch"):
            raise BenchError(f"estimator={self.estimator!r}: choose one_branch or two_branch")
        for arm in self.arms():
            self.arm_config(arm)

    def arms(self) -> list[str]:
        return ["full", *(arm_name(f) for f in sorted(self.fractions)), "sliding"]

    def full_config(self):
        from ..model.config import PRESETS, ModelConfig

        return ModelConfig.from_dict({**PRESETS["tiny-llama"], "name": "switch-bench-full", "vocab_size":
                                      self.vocab_size, "d_model": self.d_model, "n_layers": self.n_layers,
                                      "n_heads": self.n_heads, "n_kv_heads": self.n_heads,
                                      "max_seq_len": self.seq_len})

    def arm_config(self, arm: str):
        from ..model.config import ConfigError

        full = self.full_config()
        try:
            if arm == "full":
                return full
            if arm == "sliding":
                return full.replace(name="switch-bench-sliding", attention="sliding", window=self.window)
            for f in self.fractions:
                if arm == arm_name(f):
                    return full.replace(name=f"switch-bench-{arm}", attention="switch", window=self.window,
                                        full_fraction=f, switch_estimator=self.estimator,
                                        switch_lambda_lr=self.lambda_lr)
        except ConfigError as exc:
            raise BenchError(f"arm {arm}: {exc}") from exc
        raise BenchError(f"unknown arm {arm!r}; choose from {', '.join(self.arms())}")

    def train_args(self, seed: int, *, pretrain: bool = False):
        from ..train.optim import TrainArgs

        steps = self.pretrain_steps if pretrain else self.steps
        every = max(steps // 2, 1) if pretrain else self.eval_every
        return TrainArgs(max_steps=steps, schedule_steps=steps, lr=self.lr if pretrain else self.continue_lr,
                         warmup_steps=min(self.warmup_steps, max(steps // 10, 1)), min_lr_ratio=self.min_lr_ratio,
                         weight_decay=self.weight_decay, eval_every=every, seed=seed, progress=False, device="cpu",
                         precision=self.precision)


def default_corpus() -> str:
    from .growth_config import default_corpus as growth_default

    return growth_default()


def full_config(**changes: Any) -> SwitchBenchConfig:
    """The committed run (not yet run at full size in this commit): d = 128, L = 4, 4 heads (head dim 32), vocab
    2048, context 1024, window 128 (at ρ = 0.25 the ruler counts ≈ 0.34 of full attention's attention FLOPs),
    batch 4 × 1024 tokens; pretraining 400 steps (1.64M tokens, once, shared by the seeds), then 5 arms × 3 seeds ×
    160 steps (0.66M tokens per arm) at lr 1e-3, held-out loss every 40 steps.

    Sizing, measured on this 2-core machine (wall time of one training step, one thread, bf16 autocast, batch
    4 × 1024, AdamW, with the load average at 4.5 from other runs): full attention 0.70 s, sliding window 0.75 s,
    Switch Attention (one-branch estimator, ~50% of the tokens routed to full) 1.2 s. Pretraining 400 × 0.7 s
    ≈ 4.7 min on one worker; per seed the continuations take 160 × (0.7 + 3 × 1.2 + 0.75) s ≈ 13.5 min, × 3 seeds
    over two workers ≈ 20 min; evaluations, probes (32 × 1024 tokens per arm), memory steps and the timing
    ≈ 2 min: ≈ 27 min in all, within the 35-minute budget with ~20% to spare."""
    cfg = SwitchBenchConfig(profile="full", corpus=default_corpus(), steps=160, eval_every=40)
    return dataclasses.replace(cfg, **changes)


def quick_config(**changes: Any) -> SwitchBenchConfig:
    """One seed at a small size, every arm: a smoke test of the whole pipeline, not a measurement."""
    cfg = SwitchBenchConfig(profile="quick", corpus=default_corpus(), max_bytes=2_000_000, vocab_size=512,
                            seq_len=256, window=32, batch_size=2, eval_batches=2, d_model=64, n_layers=2, n_heads=2,
                            pretrain_steps=20, steps=10, warmup_steps=2, eval_every=5, seeds=[0], probe_samples=8,
                            timing_seq_len=1024, timing_repeats=2)
    return dataclasses.replace(cfg, **changes)


def ci_config(**changes: Any) -> SwitchBenchConfig:
    """The CI profile (tests/test_bench_switch_attn.py): tiny T and w, on whatever corpus the test gives."""
    cfg = quick_config(profile="test", max_bytes=300_000, vocab_size=300, seq_len=64, window=8, d_model=32,
                       n_layers=2, n_heads=2, pretrain_steps=4, steps=4, eval_every=2, eval_batches=1,
                       probe_samples=4, timing_seq_len=64, timing_repeats=1)
    return dataclasses.replace(cfg, **changes)


# ------------------------------------------------------------------------------------------------- helpers
def default_work_dir() -> Path:
    return bench_work_dir("switch-attn-bench")


def results_path(cfg: SwitchBenchConfig) -> Path:
    """benchmarks/results/switch-attn.json (``$MORPHLM_RESULTS`` moves the folder); switch-attn-quick.json /
    switch-attn-test.json for the small profiles."""
    return results_file("switch-attn", cfg.profile)


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _std(xs):
    xs = [x for x in xs if x is not None]
    return statistics.stdev(xs) if len(xs) > 1 else None


# ------------------------------------------------------------------------------------------------- the probe
def build_probe(tokenizer, val_tokens, *, seq_len: int, window: int, samples: int, seed: int = PROBE_SEED
                ) -> list[dict[str, Any]]:
    """The long-range retrieval probe: ``samples`` sequences of exactly ``seq_len`` tokens built from held-out text.

    Each sequence is held-out filler (a contiguous stretch of ``val_tokens`` at a seeded offset) with a statement
    ``" KEY: VALUE."`` inserted at a seeded position and, at the end, the query ``" KEY:"`` followed by the value's
    tokens ``" VALUE"``: KEY is four random lowercase letters, VALUE four random digits (fresh per sample), each
    piece tokenized on its own so the value's tokens in the statement and after the query are the same ids. The
    statement ENDS more than ``window`` tokens before the query starts, so a sliding window of width ``window`` at
    any value position cannot see it. Returns dicts with ``input_ids`` (seq_len ints), ``targets`` (the positions
    whose NEXT token is a value token, i.e. the logits that must predict it), ``values`` (those token ids),
    ``statement`` (start, end) and ``query`` (its start). A pure function of its arguments."""
    import numpy as np

    rng = random.Random(seed)
    val = np.asarray(val_tokens)
    out = []
    for _ in range(samples):
        key = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(4))
        value = "".join(rng.choice("0123456789") for _ in range(4))
        key_ids = tokenizer.encode(f" {key}:")
        value_ids = tokenizer.encode(f" {value}")
        stmt = key_ids + value_ids + tokenizer.encode(".")
        tail = key_ids + value_ids  # the query and its answer end the sequence
        filler_len = seq_len - len(stmt) - len(tail)
        latest = filler_len - window - 1  # statement start at most here: its end stays > window before the query
        if latest < 0:
            raise BenchError(f"the retrieval probe needs seq_len > window + {len(stmt) + len(tail)} tokens "
                             f"(seq_len={seq_len}, window={window}); raise seq_len or lower the window")
        if len(val) < filler_len:
            raise BenchError(f"the held-out split has {len(val)} tokens, fewer than the probe's filler "
                             f"({filler_len}); use a bigger corpus or a shorter seq_len")
        offset = rng.randrange(0, len(val) - filler_len + 1)
        filler = [int(t) for t in val[offset:offset + filler_len]]
        at = rng.randrange(0, latest + 1)
        ids = filler[:at] + stmt + filler[at:] + tail
        query = len(ids) - len(tail)
        first_value = query + len(key_ids)
        out.append({"input_ids": ids, "targets": list(range(first_value - 1, len(ids) - 1)), "values": value_ids,
                    "statement": (at, at + len(stmt)), "query": query, "key": key, "value": value})
    return out


def probe_accuracy(model, probe: list[dict[str, Any]], precision: str) -> float:
    """Next-token accuracy (argmax) on the probe's value tokens, over all samples."""
    import torch

    from ..train.steps import autocast

    model.eval()
    hits = total = 0
    with torch.no_grad(), autocast(torch.device("cpu"), precision):
        for s in probe:
            logits = model(torch.tensor([s["input_ids"]])).logits[0]
            pred = logits[s["targets"]].argmax(-1).tolist()
            hits += sum(int(p == v) for p, v in zip(pred, s["values"]))
            total += len(s["values"])
    return hits / total


def evaluate(model, batches: list[dict], window: int, precision: str) -> dict[str, Any]:
    """Held-out loss over every position and over positions t >= window; realised full fraction per layer."""
    import torch
    import torch.nn.functional as F

    from ..train.steps import autocast

    model.eval()
    tot = tot_n = beyond = beyond_n = 0.0
    fracs: list[list[float]] = []
    with torch.no_grad(), autocast(torch.device("cpu"), precision):
        for b in batches:
            logits = model(b["input_ids"]).logits.float()
            nll = F.cross_entropy(logits.transpose(1, 2), b["labels"], reduction="none")  # (B, T)
            tot += float(nll.sum())
            tot_n += nll.numel()
            beyond += float(nll[:, window:].sum())
            beyond_n += nll[:, window:].numel()
            routers = model.switch_routers()
            if routers:
                fracs.append([float(r.last_full) for r in routers])
    cfg = model.config
    if fracs:
        per_layer = [statistics.fmean(col) for col in zip(*fracs)]
    else:
        per_layer = [1.0 if cfg.attention == "full" else 0.0] * cfg.n_layers
    return {"val_loss": tot / tot_n, "val_loss_beyond_window": beyond / beyond_n if beyond_n else None,
            "full_fraction_per_layer": per_layer}


def peak_step_bytes(model, batch: dict, precision: str) -> int | None:
    """Peak live CPU allocations (PyTorch profiler memory events) during one forward + backward at ``batch``."""
    import torch

    from ..train.steps import autocast
    from .moe_layer import _peak_bytes

    model.train()

    def step() -> None:
        with autocast(torch.device("cpu"), precision):
            out = model(batch["input_ids"], labels=batch["labels"])
        out.loss.backward()
        model.zero_grad(set_to_none=True)

    return _peak_bytes(step)


# ------------------------------------------------------------------------------------------------- timing
def time_attention(*, n_heads: int, head_dim: int, seq_len: int, window: int, fraction: float | None,
                   estimator: str = "one_branch", repeats: int = 5, precision: str = "fp32", seed: int = 0,
                   batch: int = 1) -> dict[str, Any]:
    """Forward + backward seconds (median of ``repeats``, one thread, after a warm-up) of one layer's attention
    core at ``batch``: ``fraction`` None -> full causal SDPA; 0.0 -> the sliding window; else Switch Attention with
    round(fraction·(T − w)) full-routed positions beyond the window drawn at random (seeded), the router's
    gradient by ``estimator``."""
    import torch

    from ..model.config import ModelConfig
    from ..model.switch_attention import SwitchRouter, full_branch, variant_attention

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(seed)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        shape = (batch, n_heads, seq_len, head_dim)
        q, k, v = (torch.randn(shape, generator=g).to(dtype).requires_grad_() for _ in range(3))
        grad = torch.randn(shape, generator=g).to(dtype)
        d = n_heads * head_dim
        router = None
        x = None
        attention = "full" if fraction is None else ("sliding" if fraction == 0.0 else "switch")
        if attention == "switch":
            cfg = ModelConfig(vocab_size=32, d_model=d, n_layers=1, n_heads=n_heads, max_seq_len=seq_len,
                              attention="switch", window=window, full_fraction=0.25, switch_estimator=estimator)
            router = SwitchRouter(cfg)
            with torch.no_grad():
                router.proj.weight.zero_()
                router.proj.weight[0, 0] = 10.0  # p > 0.5 exactly where channel 0 is positive
                router.proj.bias.zero_()
            n_full = round(fraction * (seq_len - window))
            sign = -torch.ones(batch, seq_len)
            for b in range(batch):
                sign[b, window + torch.randperm(seq_len - window, generator=g)[:n_full]] = 1.0
            x = torch.randn(batch, seq_len, d, generator=g).abs() * 0.01
            x[:, :, 0] = sign
            router.train()

        def step() -> None:
            if attention == "full":
                y = full_branch(q, k, v, None, 0.0)
            else:
                y = variant_attention(router, attention, window, x, q, k, v, None, 0.0)
            (y * grad).sum().backward()
            for t in (q, k, v):
                t.grad = None
            if router is not None:
                router.zero_grad(set_to_none=True)

        step()
        times, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.thread_time()
            step()
            times.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
        realised = None if router is None else float(router.last_full)
        return {"seconds": statistics.median(times), "best_s": min(times), "all_s": times,
                "cpu_seconds": statistics.median(cpu), "realised_full_fraction": realised}
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------- runs
def _pretrain_key(cfg: SwitchBenchConfig, data_fp: str) -> str:
    return "pretrain-" + _hash({"model": cfg.full_config().to_dict(), "args": asdict(cfg.train_args(0, pretrain=True)),
                                "batch": [cfg.batch_size, cfg.seq_len, cfg.eval_batches], "data": data_fp,
                                "v": SCHEMA_VERSION})


def pretrain(cfg: SwitchBenchConfig, work: Path) -> Path:
    """Train (or resume, or reuse) the shared full-attention model; returns its checkpoint folder."""
    import torch

    from ..data.batches import LMBatches, derive_seed
    from ..model import TransformerLM

    tokenizer, store = prepare_store(cfg, show_progress=False)
    out = work / "pretrain" / _pretrain_key(cfg, store.meta["corpus_fingerprint"])
    done = out / "BENCH_DONE"
    if done.is_file():
        return out
    args = cfg.train_args(0, pretrain=True)
    data = LMBatches(store, cfg.batch_size, cfg.seq_len, seed=derive_seed("switch-bench-pretrain") % (2**31),
                     eval_batches=cfg.eval_batches)
    torch.manual_seed(derive_seed("switch-bench-init") % (2**31))
    model = TransformerLM(cfg.full_config())
    fit_run(model, data, args, out, tokenizer, what="the pretraining", preset="switch-attn-bench pretrain",
            save_every=max(args.max_steps // 4, 1), error=BenchError)
    done.write_text("done\n")
    return out


def _arm_key(cfg: SwitchBenchConfig, arm: str, seed: int, pre_key: str) -> str:
    relevant = {"model": cfg.arm_config(arm).to_dict(), "args": asdict(cfg.train_args(seed)), "pre": pre_key,
                "batch": [cfg.batch_size, cfg.seq_len, cfg.eval_batches], "probe": cfg.probe_samples,
                "memory": cfg.memory, "v": SCHEMA_VERSION}
    return f"{arm}-s{seed}-{_hash(relevant)}"


def run_arm(cfg: SwitchBenchConfig, arm: str, seed: int, work: Path, pre_dir: str) -> dict[str, Any]:
    """Continue the pretrained model as ``arm`` for ``seed`` (resuming a cut run); returns and caches its record."""
    import torch

    from ..train import checkpoint as ckpt
    from ..train.flops import attention_flops_per_token
    from ..train.steps import resolve_precision

    tokenizer, store = prepare_store(cfg, show_progress=False)

    def warm_start(model) -> None:
        state, _ = ckpt.load_state_dict(pre_dir)
        own = model.state_dict()
        missing = [k for k in own if k not in state and ".attn.switch." not in k]
        if missing:
            raise BenchError(f"{arm}: the pretrained model lacks {missing[:3]}; delete {pre_dir} and rerun")
        model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)

    def describe(model, model_cfg, data, res, records) -> dict[str, Any]:
        precision = resolve_precision(torch.device("cpu"), cfg.precision)
        curve = [{"step": int(r["step"]), "tokens": int(r["tokens"]), "val_loss": float(r["val_loss"])}
                 for r in records if "val_loss" in r]
        steps = [r for r in records if "loss" in r]
        tail = steps[-max(1, len(steps) // 4):]
        train_full = None
        if model_cfg.attention == "switch":
            train_full = [_mean([r.get(f"switch{i}_full") for r in tail]) for i in range(model_cfg.n_layers)]
        ev = evaluate(model, data.val_batches(), cfg.window, precision)
        probe = build_probe(tokenizer, store.val, seq_len=cfg.seq_len, window=cfg.window,
                            samples=cfg.probe_samples)
        flops = attention_flops_per_token(model_cfg, cfg.seq_len,
                                          ev["full_fraction_per_layer"] if model_cfg.attention == "switch" else None)
        return {"steps": int(res.steps), "pretrained": Path(pre_dir).name, "tokens": int(res.tokens), **ev,
                "train_full_fraction_per_layer": train_full,
                "retrieval": probe_accuracy(model, probe, precision),
                "attn_flops_per_token": flops,
                "attn_flops_ratio": flops / attention_flops_per_token(cfg.full_config(), cfg.seq_len),
                "peak_train_bytes": (peak_step_bytes(model, data.train_batch(0), precision) if cfg.memory
                                     else None),
                "curve": curve, "precision": precision}

    return train_lm_arm(cfg, arm, seed, work, _arm_key(cfg, arm, seed, Path(pre_dir).name), tokenizer=tokenizer,
                        store=store, init_label="switch-bench-arm", preset=f"switch-attn-bench {arm}",
                        error=BenchError, describe=describe, warm_start=warm_start)


def job(payload: dict[str, Any]) -> dict[str, Any]:
    """Worker entry point (:func:`morphlm.bench.runner.run_jobs`): one (arm, seed) continuation."""
    worker_setup()
    cfg = SwitchBenchConfig(**payload["cfg"])
    return guarded_job(lambda: run_arm(cfg, payload["name"], payload["seed"], Path(payload["work"]), payload["pre"]))


def measure_times(cfg: SwitchBenchConfig, arms: dict[str, dict], precision: str, work: Path) -> dict[str, Any]:
    """Attention fwd+bwd time per arm (:func:`time_attention`) at the arms' measured mean full fractions, and the
    ratio to full attention; cached per shape, fractions and torch version."""
    from .common import library_versions

    fractions = {a: (None if a == "full" else 0.0 if a == "sliding" else
                     round(statistics.fmean(arms[a]["full_fraction_per_layer"]), 4)) for a in arms}
    shape = dict(batch=cfg.batch_size, n_heads=cfg.n_heads, head_dim=cfg.d_model // cfg.n_heads,
                 seq_len=cfg.timing_seq_len, window=cfg.window, estimator=cfg.estimator,
                 repeats=cfg.timing_repeats, precision=precision)
    key = "timing-" + _hash({"shape": shape, "fractions": fractions, "torch": library_versions()["torch"],
                             "v": SCHEMA_VERSION})

    def run() -> dict[str, Any]:
        per = {a: time_attention(**shape, fraction=f) for a, f in fractions.items()}
        full = per["full"]["seconds"]
        # the Switch arms also at their TARGET fraction: the kernel's cost whether or not the routers converged
        target = {arm_name(f): time_attention(**shape, fraction=f)["seconds"] / full for f in cfg.fractions
                  if arm_name(f) in arms}
        return {"what": "forward+backward of one layer's attention core (routing and branches, no projections), "
                        "at the training batch size, median of repeats (best in best_s), one thread",
                **shape, "fractions": fractions,
                "seconds": {a: r["seconds"] for a, r in per.items()},
                "best_s": {a: r["best_s"] for a, r in per.items()},
                "ratio_vs_full": {a: r["seconds"] / full for a, r in per.items()},
                # the thread's CPU time: what the kernels cost when other jobs share the cores (wall time counts
                # the waits too)
                "cpu_seconds": {a: r["cpu_seconds"] for a, r in per.items()},
                "ratio_vs_full_cpu": {a: r["cpu_seconds"] / per["full"]["cpu_seconds"] for a, r in per.items()},
                "ratio_vs_full_at_target": target,
                "realised": {a: r["realised_full_fraction"] for a, r in per.items()}}

    return ResultCache(work / "measurements").get_or_run(key, run, "the attention timing")


# ------------------------------------------------------------------------------------------------- analysis
def analyse(runs: dict[str, dict[int, dict]]) -> dict[str, dict[str, Any]]:
    """Per arm over seeds: means and sample stds, and the paired per-seed loss differences to full attention."""
    full = runs.get("full", {})
    out = {}
    for arm, by in runs.items():
        recs = [by[s] for s in sorted(by)]
        gaps = [by[s]["val_loss"] - full[s]["val_loss"] for s in sorted(by) if s in full]
        gaps_b = [by[s]["val_loss_beyond_window"] - full[s]["val_loss_beyond_window"] for s in sorted(by)
                  if s in full and by[s]["val_loss_beyond_window"] is not None]
        layers = list(zip(*[r["full_fraction_per_layer"] for r in recs]))
        out[arm] = {
            "seeds": len(recs),
            "val_loss": _mean([r["val_loss"] for r in recs]), "val_loss_std": _std([r["val_loss"] for r in recs]),
            "val_loss_beyond_window": _mean([r["val_loss_beyond_window"] for r in recs]),
            "loss_gap_vs_full": _mean(gaps), "loss_gap_vs_full_std": _std(gaps),
            "loss_gap_beyond_window_vs_full": _mean(gaps_b),
            "retrieval": _mean([r["retrieval"] for r in recs]), "retrieval_std": _std([r["retrieval"] for r in recs]),
            "full_fraction_per_layer": [statistics.fmean(col) for col in layers],
            "attn_flops_ratio": _mean([r["attn_flops_ratio"] for r in recs]),
            "peak_train_bytes": _mean([r["peak_train_bytes"] for r in recs]),
        }
    return out


RETRIEVAL_MARGIN = 0.10
"""The retrieval goals are judged only when full attention beats the sliding window on the probe by at least this
much (a fraction of the value tokens); below it the probe measures nothing and both goals are None, with the
reason in ``goal_notes``."""


def summarise(arms: dict[str, dict[str, Any]], seeds: list[int], timing: dict[str, Any] | None) -> dict[str, Any]:
    """The summary keys and the goals (:data:`GOALS`) from the per-arm statistics; None where an arm is missing."""
    sw = arms.get(arm_name(0.25), {})
    gap = sw.get("loss_gap_vs_full")
    flops = sw.get("attn_flops_ratio")
    t = (timing or {}).get("ratio_vs_full", {}).get(arm_name(0.25))
    r_sw, r_swa, r_full = sw.get("retrieval"), arms.get("sliding", {}).get("retrieval"), \
        arms.get("full", {}).get("retrieval")
    have_r = None not in (r_sw, r_swa, r_full)
    notes = {}
    if have_r and r_full - r_swa < RETRIEVAL_MARGIN:
        # the probe measures long-range use only if full attention beats the window at it
        have_r = False
        notes["retrieval"] = (f"not measurable: full attention scores {r_full:.3f} on the probe against "
                              f"{r_swa:.3f} for the sliding window (less than {RETRIEVAL_MARGIN} apart), so the "
                              f"models do not use the distant key at this scale")
    goals = {
        "loss_within_0.02_of_full": None if gap is None else gap <= 0.02,
        "attn_flops_at_most_40pct": None if flops is None else flops <= 0.40,
        "attn_time_at_most_0.6x": None if t is None else t <= 0.6,
        "retrieval_far_above_swa": (r_full > r_swa and r_sw - r_swa >= 0.5 * (r_full - r_swa)) if have_r else None,
        "retrieval_close_to_full": (r_sw >= r_full - 0.05) if have_r else None,
    }
    return {"loss_gap_vs_full": gap, "attn_flops_ratio": flops, "attn_time_ratio": t, "retrieval_switch": r_sw,
            "retrieval_swa": r_swa, "retrieval_full": r_full, "seeds": len(seeds), "goals": goals,
            "goal_notes": notes}


def _fmt(x, spec=".3f"):
    return "—" if x is None else format(x, spec)


def markdown_table(results: dict[str, Any]) -> str:
    """The README table of a results JSON."""
    arms = results.get("arms")
    if not isinstance(arms, dict) or not arms:
        raise BenchError("the results JSON has no arms; is it a `morphlm bench switch-attn` result?")
    timing = (results.get("timing") or {}).get("ratio_vs_full", {})
    rows = ["| arm | val loss | loss t ≥ w | Δ vs full | retrieval | full fraction per layer | attn FLOPs | "
            "attn time (T=%s) | peak train MB |" % (results.get("timing") or {}).get("seq_len", "?"),
            "|---|---|---|---|---|---|---|---|---|"]
    for arm, a in arms.items():
        std = f" ± {a['loss_gap_vs_full_std']:.3f}" if a.get("loss_gap_vs_full_std") is not None else ""
        layers = " ".join(f"{f:.2f}" for f in a["full_fraction_per_layer"])
        t = timing.get(arm)
        t_cell = "—" if t is None else f"{t:.2f}×"
        peak = None if a.get("peak_train_bytes") is None else a["peak_train_bytes"] / 2**20
        rows.append(f"| {arm} | {_fmt(a['val_loss'])} | {_fmt(a['val_loss_beyond_window'])} | "
                    f"{_fmt(a['loss_gap_vs_full'], '+.3f')}{std} | {_fmt(a['retrieval'], '.2f')} | {layers} | "
                    f"{_fmt(a['attn_flops_ratio'], '.2f')} | {t_cell} | {_fmt(peak, '.0f')} |")
    s = results.get("summary", {})
    goals = ", ".join(f"{k}: {v}" for k, v in s.get("goals", {}).items())
    rows.append("")
    rows.append(f"Seeds: {s.get('seeds')}. Goals (ρ* = 0.25): {goals}.")
    for what, note in (s.get("goal_notes") or {}).items():
        rows.append(f"{what}: {note}.")
    return "\n".join(rows)


def plot_results(results: dict[str, Any], path: Path) -> Path:
    """Validation curves of the continuation (mean over seeds) and retrieval accuracy per arm."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for arm, by in results["runs"].items():
        curves = [r["curve"] for r in by.values()]
        steps = [p["tokens"] for p in curves[0]]
        loss = [statistics.fmean(c[i]["val_loss"] for c in curves) for i in range(len(steps))]
        ax1.plot(steps, loss, marker="o", label=arm)
    ax1.set_xlabel("continuation tokens")
    ax1.set_ylabel("held-out loss (nats/token)")
    ax1.legend()
    names = list(results["arms"])
    ax2.bar(names, [results["arms"][a]["retrieval"] or 0.0 for a in names])
    ax2.set_ylabel("retrieval probe accuracy")
    ax2.set_ylim(0.0, 1.0)
    ax2.tick_params(axis="x", rotation=30)
    return save_plot(fig, path, dpi=100)


# ------------------------------------------------------------------------------------------------- the benchmark
def run_benchmark(cfg: SwitchBenchConfig, *, out_json: str | Path | None = None, work_dir: str | Path | None = None,
                  workers: int | None = None, plot: bool = True) -> dict[str, Any]:
    """Run (or resume) the benchmark; writes the results JSON (+ plot next to it) and returns the results. A Ctrl-C
    stops it with :class:`~morphlm.bench.runner.BenchInterrupted` and writes no results; rerun to continue."""
    cfg.validate()
    with STOP:
        return _run(cfg, out_json=out_json, work_dir=work_dir, workers=workers, plot=plot)


def _run(cfg: SwitchBenchConfig, *, out_json, work_dir, workers, plot) -> dict[str, Any]:
    import torch

    from ..train.steps import resolve_precision
    from .common import metadata, usable_cores, write_results

    work = Path(work_dir) if work_dir is not None else default_work_dir()
    work.mkdir(parents=True, exist_ok=True)
    out_json = Path(out_json) if out_json is not None else results_path(cfg)
    t0 = time.perf_counter()
    tokenizer, store = prepare_store(cfg)
    pre = pretrain(cfg, work)
    if workers is None:
        workers = min(usable_cores(), 2)
    outcomes = Outcomes()
    jobs = [{"name": a, "seed": s, "cfg": asdict(cfg), "work": str(work), "pre": str(pre)}
            for a in cfg.arms() for s in cfg.seeds]
    run_jobs(jobs, job, workers=workers, desc="switch-attn bench: arms", on_done=outcomes.collect)
    runs, failures = outcomes.runs, outcomes.failures
    if "full" not in runs or arm_name(0.25) not in runs:
        raise BenchError(f"the full-attention or ρ* = 0.25 runs failed ({failures}); the summary needs both")
    runs = {a: runs[a] for a in cfg.arms() if a in runs}
    precision = resolve_precision(torch.device("cpu"), cfg.precision)
    arm_stats = analyse(runs)
    timing = measure_times(cfg, arm_stats, precision, work)
    results = {
        "benchmark": "switch-attn", "schema_version": SCHEMA_VERSION, **metadata(), "precision": precision,
        "summary": summarise(arm_stats, cfg.seeds, timing),
        "goals": GOALS,
        "protocol": {
            "pretraining": "one full-attention model, shared by every seed and arm (the arms continue the same "
                           "weights)",
            "split": "train/validation by whole books",
            "tokens": "every arm of a seed sees the same continuation batches in the same order",
            "loss_gap": "paired per seed: arm − full attention, mean ± sample std over seeds",
            "retrieval": "next-token accuracy on value tokens; statement > window tokens before the query "
                         "(build_probe)",
            "memory": "PyTorch profiler memory events (profile_memory), peak during one training step",
            "flops": "train/flops.py attention_flops_per_token at the measured per-layer fractions",
            "timing": "one layer's attention core, forward+backward, training batch size, one thread"},
        "config": {**asdict(cfg), "full_model": cfg.full_config().to_dict(),
                   "tokens_per_arm": cfg.steps * cfg.batch_size * cfg.seq_len,
                   "pretrain_tokens": cfg.pretrain_steps * cfg.batch_size * cfg.seq_len},
        "data": {"corpus": cfg.corpus, "vocab_size": tokenizer.vocab_size,
                 **store_meta(store)},
        "arms": arm_stats, "timing": timing,
        "runs": {a: {str(s): r for s, r in sorted(by.items())} for a, by in runs.items()},
        "failures": failures, "wall_s": time.perf_counter() - t0,
    }
    return write_results(out_json, results, plot_results if plot else None)
