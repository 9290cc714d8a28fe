"""Training throughput of morphlm against Hugging Face transformers at the same architecture.

Both sides train the same network (same weights at the start, same batch and sequence length) with
the same update rule (AdamW at TrainArgs' defaults, gradients clipped to norm ``--grad-clip``), and both
are timed in the same process:

* **morphlm** through its real training loop, :func:`morphlm.train.loop.fit` (AdamW from the loop's
  ``build_optimizer``, the loop's gradient clipping, bf16 autocast on CUDA, optional ``torch.compile``),
  fed by a synthetic random-token source that follows the loop's data contract.
* **Hugging Face** with the loop an HF user writes: ``model(input_ids=x, labels=x).loss.backward();
  clip_grad_norm_(...); opt.step(); opt.zero_grad(set_to_none=True)`` with ``torch.optim.AdamW`` (fused
  on CUDA, no weight-decay grouping), ``attn_implementation="sdpa"``, bf16 autocast on CUDA, optional
  compile. The HF model is :func:`morphlm.interop.hf.to_hf_module` of the native one. HF shifts the
  labels inside the model while morphlm's batches carry pre-shifted labels: the same work.

Clipping is on for both sides because it is part of the update (``fit`` clips at 1.0 by default, as the
HF ``Trainer`` does with ``max_grad_norm=1.0``); it costs a pass over all gradients, about 2-3% of a CPU
step at 20M parameters. ``--grad-clip 0`` turns it off on both sides.

Timing: ``time.perf_counter`` around a window of ``--steps`` steps, after ``--warmup`` discarded ones
(they hold the compile on the first call, allocator growth and AdamW's lazy state). On CUDA the clock
synchronizes only at the two ends of the window, so neither side is charged a host sync its loop does
not make (``fit`` reads the loss each step for its NaN check and log line; the HF loop keeps its losses
on the device until the window is over). On CPU every step is stamped as well. morphlm's window is
stamped from a callback at the start of steps; at the start of the step after the last timed one the
callback stops ``fit``, so the evaluation ``fit`` runs after its final step (and its recompile in eval
mode) never enters the measurement nor the benchmark's run time. Measurements alternate (morphlm, HF,
then HF, morphlm, ...) for ``--rounds`` rounds (3 on CPU, 2 on CUDA) and each side reports the median
of its rounds, which resists the noise of a shared 2-core machine. FLOPs and MFU come from the one ruler,
:mod:`morphlm.train.flops` (6·N + 12·L·d·T per token, the same for both sides).

Usage (``python benchmarks/throughput.py`` takes the same options)::

    morphlm bench throughput                              # CPU: gpt-20m and llama-20m at 8x256
    morphlm bench throughput --quick --out /tmp/t.json    # tiny sizes, < 30 s (tests use this)
    morphlm bench throughput --device cuda --variants     # gpt2-small at 16x1024, bf16, eager+compiled
    morphlm bench throughput --table                      # the README tables from the results JSON

Results go to ``benchmarks/results/throughput.json`` (``--out`` to change it). A CPU run and a GPU run
merge into the same file: each fills its own section (``cpu`` / ``gpu``, each with the machine, library
versions and commit it was measured on) and the top-level ``summary`` is recomputed from both. The file
is rewritten after every measurement, so a run cut off by a timeout keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from ..model import ModelConfig, TransformerLM
from .common import ROOT, read_json, usable_cores
from .throughput_measure import (DEFAULT_GRAD_CLIP, OPTIM, SyntheticTokens, _direct_hf_config,  # noqa: F401
                                 build_hf_model, log, measure_hf, measure_morphlm)
from .throughput_results import (GOALS, REFERENCE, SCHEMA_VERSION, Recorder, headline_machine,  # noqa: F401
                                 render_table, summarize)

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "throughput.json"

# Per device (and quick mode): presets, global batch, sequence length, warmup/timed steps, rounds, modes.
PROFILES: dict[str, dict[str, Any]] = {
    "cpu": dict(presets=["gpt-20m", "llama-20m"], batch=8, seq=256, warmup=3, steps=8, rounds=3, modes=["eager"]),
    "cpu-quick": dict(presets=["tiny", "tiny-llama"], batch=4, seq=64, warmup=1, steps=3, rounds=1,
                      modes=["eager"]),
    "cuda": dict(presets=["gpt2-small"], batch=16, seq=1024, warmup=10, steps=20, rounds=2,
                 modes=["eager", "compiled"]),
    "cuda-quick": dict(presets=["tiny"], batch=4, seq=64, warmup=2, steps=3, rounds=1, modes=["eager", "compiled"]),
}



class ThroughputError(ValueError):
    """Settings the benchmark cannot run with; the message names the problem and the fix."""


# ============================================================================ the benchmark
def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _cudnn_preferred():
    """sdpa_kernel context that tries cuDNN attention first, then flash, then memory-efficient."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    if "set_priority" in inspect.signature(sdpa_kernel).parameters:
        return sdpa_kernel(order, set_priority=True)
    return sdpa_kernel(order)


def _timed_round(rec: Recorder, e: dict[str, Any], measure: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """One timed round of entry ``e``: its numbers with the wall time added and recorded, or None when it failed
    (the error is recorded and printed; the other entries are still measured)."""
    t0 = time.perf_counter()
    try:
        rnd = measure()
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - record it, keep measuring the others
        traceback.print_exc()
        rec.fail(e, exc)
        log(f"  {e['name']}: FAILED ({type(exc).__name__}: {exc})")
        return None
    rnd["wall_s"] = time.perf_counter() - t0
    rec.add_round(e, rnd)
    return rnd


def run_preset(rec: Recorder, preset: str, st: dict[str, Any], device: torch.device) -> None:
    cfg = ModelConfig.from_name(preset)
    if st["seq"] > cfg.max_seq_len:
        cfg = cfg.replace(max_seq_len=st["seq"])
    torch.manual_seed(st["seed"])
    model = TransformerLM(cfg)
    hf, how = build_hf_model(model)
    model.to(device)
    hf.to(device)
    n_params = model.num_parameters()
    data = SyntheticTokens(st["batch"], st["seq"], cfg.vocab_size, seed=st["seed"])
    hf_runners: dict[str, torch.nn.Module] = {}
    attn_impl = getattr(hf.config, "_attn_implementation", None)
    log(f"== {preset}: {n_params / 1e6:.1f}M parameters, batch {st['batch']} x seq {st['seq']} on {device}; "
        f"HF {type(hf).__name__} via {how}, attention {attn_impl}")

    common = dict(batch=st["batch"], micro_batch=st["batch"], seq=st["seq"], device=device, n_params=n_params)
    for mode in st["modes"]:
        compiled = mode == "compiled"
        e_m = rec.entry("morphlm", preset, cfg, mode, None, **common)
        e_h = rec.entry("hf", preset, cfg, mode, None, **common,
                        note=f"{type(hf).__name__} via {how}; attn_implementation={attn_impl}")
        for r in range(st["rounds"]):
            order = ("morphlm", "hf") if r % 2 == 0 else ("hf", "morphlm")
            for impl in order:
                e = e_m if impl == "morphlm" else e_h
                if e["error"]:
                    continue
                def measure(impl=impl):
                    if impl == "morphlm":
                        return measure_morphlm(model, data, device, compile=compiled, warmup=st["warmup"],
                                               timed=st["steps"], grad_clip=st["grad_clip"], seed=st["seed"])
                    if mode not in hf_runners:
                        hf_runners[mode] = torch.compile(hf) if compiled else hf
                    return measure_hf(hf, hf_runners[mode], data, device, warmup=st["warmup"],
                                      timed=st["steps"], grad_clip=st["grad_clip"])

                rnd = _timed_round(rec, e, measure)
                if rnd is None:
                    continue
                mfu = f", MFU {e['mfu']:.1%}" if e["mfu"] is not None else ""
                log(f"  round {r + 1}/{st['rounds']} {e['name']}: {rnd['tok_per_s']:,.0f} tok/s "
                    f"(step {rnd['step_time_s'] * 1e3:.1f} ms, loss {rnd['first_loss']:.3f}, "
                    f"{rnd['wall_s']:.1f} s wall){mfu}")
        if e_m["tok_per_s"] and e_h["tok_per_s"]:
            log(f"  {preset} {mode}: morphlm {e_m['tok_per_s']:,.0f} tok/s, HF {e_h['tok_per_s']:,.0f} tok/s, "
                f"ratio {e_m['tok_per_s'] / e_h['tok_per_s']:.2f}x")

    if st["variants"] and device.type == "cuda":
        run_variants(rec, preset, cfg, model, st, device, n_params)
    del model, hf, hf_runners, data
    _release_memory()


def run_variants(rec: Recorder, preset: str, cfg: ModelConfig, model: TransformerLM, st: dict[str, Any],
                 device: torch.device, n_params: int) -> None:
    """Extra morphlm configurations on CUDA: the model in the plain HF-style loop instead of fit() (what the
    loop costs), a 2x larger global batch in 2 micro-batches (amortizes the optimizer step), and cuDNN
    attention preferred (eager, then compiled after a dynamo reset so the compiled graph is traced under
    the new backend order). On torch 2.11 with an H200, SDPA already picks the cuDNN kernels by default
    (profiled, eager and compiled alike), so there the cudnn-attn runs repeat the default kernel."""
    B, T = st["batch"], st["seq"]
    big = SyntheticTokens(2 * B, T, cfg.vocab_size, seed=st["seed"])
    same = SyntheticTokens(B, T, cfg.vocab_size, seed=st["seed"])
    plans = [
        ("eager", "plain-loop", same, B, contextlib.nullcontext, False),
        ("compiled", "plain-loop", same, B, contextlib.nullcontext, False),
        ("compiled", f"accum{2 * B}x{B}", big, B, contextlib.nullcontext, False),
        ("eager", "cudnn-attn", same, B, _cudnn_preferred, False),
        ("compiled", "cudnn-attn", same, B, _cudnn_preferred, True),
    ]
    for mode, variant, data, micro, ctx, reset in plans:
        batch = data.train_batch(0)["input_ids"].shape[0]
        note = ("morphlm's model in the HF-style loop of measure_hf (not fit): separates the model from the loop"
                if variant == "plain-loop" else None)
        e = rec.entry("morphlm", preset, cfg, mode, variant, batch=batch, micro_batch=micro, seq=T, device=device,
                      n_params=n_params, note=note)
        def measure(mode=mode, variant=variant, data=data, micro=micro, ctx=ctx, reset=reset):
            if reset:
                torch._dynamo.reset()
            with ctx():
                if variant == "plain-loop":
                    runner = torch.compile(model) if mode == "compiled" else model
                    return measure_hf(model, runner, data, device, warmup=st["warmup"], timed=st["steps"],
                                      grad_clip=st["grad_clip"])
                return measure_morphlm(model, data, device, compile=mode == "compiled", warmup=st["warmup"],
                                       timed=st["steps"], grad_clip=st["grad_clip"], micro_batch=micro,
                                       seed=st["seed"])

        rnd = _timed_round(rec, e, measure)
        if rnd is None:
            continue
        mfu = f", MFU {e['mfu']:.1%}" if e["mfu"] is not None else ""
        log(f"  variant {e['name']}: {rnd['tok_per_s']:,.0f} tok/s (step {rnd['step_time_s'] * 1e3:.1f} ms, "
            f"{rnd['wall_s']:.1f} s wall){mfu}")
    del big, same
    _release_memory()


# ============================================================================ entry points
def run(*, device: str = "cpu", quick: bool = False, out: str | Path | None = None, presets: list[str] | None = None,
        batch: int | None = None, seq: int | None = None, warmup: int | None = None, steps: int | None = None,
        rounds: int | None = None, modes: list[str] | None = None, threads: int | None = None,
        variants: bool = False, grad_clip: float = DEFAULT_GRAD_CLIP, seed: int = 0) -> dict[str, Any]:
    """Measure every preset of the device's profile (``None`` keeps the profile's value) and write the results
    JSON (merged with the other device's section of the same file); returns the results with ``path``.
    ``quick`` writes to a temporary file unless ``out`` is given, and never to the committed results."""
    out = Path(out) if out is not None else None
    if quick:
        if out is None:
            out = Path(tempfile.gettempdir()) / "morphlm-throughput-quick.json"
        if out.resolve() == DEFAULT_OUT.resolve():
            raise ThroughputError(f"--quick numbers would overwrite the committed results {DEFAULT_OUT}; pass "
                                  f"another --out")
    out = out or DEFAULT_OUT
    if device not in ("cpu", "cuda"):
        raise ThroughputError(f"--device {device!r}: choose cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ThroughputError("--device cuda: no CUDA GPU is visible")

    st = dict(PROFILES[device + ("-quick" if quick else "")])
    for key, value in (("batch", batch), ("seq", seq), ("warmup", warmup), ("steps", steps), ("rounds", rounds)):
        if value is not None:
            st[key] = value
    if presets:
        st["presets"] = list(presets)
    if modes:
        st["modes"] = list(modes)
    bad = [m for m in st["modes"] if m not in ("eager", "compiled")]
    if bad or st["steps"] < 1 or st["warmup"] < 0 or st["rounds"] < 1 or grad_clip < 0:
        raise ThroughputError(f"invalid settings: modes {st['modes']}, steps {st['steps']}, warmup {st['warmup']}, "
                              f"rounds {st['rounds']}, grad clip {grad_clip}; need modes eager/compiled, steps >= 1, "
                              f"warmup >= 0, rounds >= 1, grad clip >= 0")
    dev = torch.device(device)
    threads = threads or usable_cores()
    if dev.type == "cpu":
        torch.set_num_threads(threads)
    cuda_note = ", bf16 autocast, fused AdamW" if dev.type == "cuda" else ""
    st.update(quick=quick, variants=variants, seed=seed, threads=torch.get_num_threads(),
              grad_clip=grad_clip, optimizer={**OPTIM, "betas": list(OPTIM["betas"])},
              morphlm_loop="fit(): AdamW from build_optimizer (decay on matrices only), clip_grad_norm_, "
                           "loss synced each step" + cuda_note,
              hf_loop="model(input_ids=x, labels=x).loss.backward(); clip_grad_norm_; AdamW.step(); "
                      "zero_grad(set_to_none=True); loss.item() each step" + cuda_note)
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    rec = Recorder(out, "gpu" if dev.type == "cuda" else "cpu", st, device_name)
    t0 = time.perf_counter()
    log(f"throughput benchmark on {device_name or 'cpu'} ({threads} threads), writing {out}")
    for preset in st["presets"]:
        run_preset(rec, preset, st, dev)
    rec.data[rec.section]["wall_s"] = time.perf_counter() - t0
    rec.flush()
    s = rec.data["summary"]
    log(f"done in {time.perf_counter() - t0:.0f} s; summary: " +
        ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items()
                  if k in ("cpu_speedup_vs_hf", "gpu_mfu_124m", "gpu_speedup_vs_hf_compiled")))
    return {**rec.data, "path": str(out)}


def table(out: str | Path | None = None) -> str:
    """The README tables from a results JSON (default: the committed one)."""
    path = Path(out) if out is not None else DEFAULT_OUT
    data = read_json(path)
    if data is None:
        raise FileNotFoundError(f"no results at {path}; run `morphlm bench throughput` first")
    return render_table(data)


def csv_list(value: str | None) -> list[str] | None:
    return [x.strip() for x in value.split(",") if x.strip()] if value else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one short round (smoke test); needs --out")
    p.add_argument("--out", type=Path, default=None, help=f"results JSON (default {DEFAULT_OUT.relative_to(ROOT)})")
    p.add_argument("--presets", default=None, help="comma-separated model presets (default per device)")
    p.add_argument("--batch", type=int, default=None, help="sequences per optimizer step")
    p.add_argument("--seq", type=int, default=None, help="sequence length")
    p.add_argument("--warmup", type=int, default=None, help="discarded steps per measurement")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
    p.add_argument("--rounds", type=int, default=None, help="interleaved morphlm/HF rounds (median reported)")
    p.add_argument("--modes", default=None, help="comma-separated: eager,compiled (default: eager on CPU, both on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the usable cores)")
    p.add_argument("--variants", action="store_true", help="CUDA: extra morphlm runs (accumulation, cuDNN attention)")
    p.add_argument("--grad-clip", type=float, default=DEFAULT_GRAD_CLIP,
                   help="gradient-norm clipping on both sides (0 = off; default: fit's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--table", action="store_true", help="print the README markdown table from --out and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/throughput.py ...``: the same as ``morphlm bench throughput ...``; exit status 2 with
    one line on stderr for bad settings or a missing results file."""
    a = parse_args(argv)
    try:
        if a.table:
            print(table(a.out))
            return 0
        run(device=a.device, quick=a.quick, out=a.out, presets=csv_list(a.presets), batch=a.batch, seq=a.seq,
            warmup=a.warmup, steps=a.steps, rounds=a.rounds, modes=csv_list(a.modes), threads=a.threads,
            variants=a.variants, grad_clip=a.grad_clip, seed=a.seed)
    except (ThroughputError, FileNotFoundError) as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0
