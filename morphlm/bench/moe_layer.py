"""The layer half of ``morphlm bench moe``: our routed FFN (:class:`morphlm.model.moe.MoEFFN`) against Hugging Face's
own MoE block at identical shapes and weights, forward + backward, tokens/s and peak memory.

The reference is transformers' ``MixtralSparseMoeBlock`` (softmax router, top-k renormalised, SwiGLU experts stored
as fused 3-D ``gate_up_proj`` / ``down_proj``) in each experts implementation the installed version offers on a
CPU: ``eager`` (its per-expert loop with ``index_add_``), ``grouped_mm`` and ``batched_mm`` (selected through the
config's ``_experts_implementation``; ``batched_mm`` only where its per-token copy of the expert weights stays under
:data:`BATCHED_MM_MAX_BYTES` — the notes say when it was skipped). Ours is configured to compute the same
function (``moe_router='softmax'``, ``moe_renormalize=true``, no balancing loss — HF adds its aux loss only at the
model level, on request) and gets the same weights; their outputs are compared in fp32 before timing
(``parity_max_abs``).

Protocol: one thread (``torch.set_num_threads(1)``, as every benchmark run here), input (1, T, d) with gradients,
loss = ⟨y, g⟩ with a fixed random g, one warm-up step then ``repeats`` timed steps, the MEDIAN reported (thread CPU
time would hide nothing here: one thread). "bf16" runs under ``torch.autocast('cpu', bfloat16)`` with fp32 weights,
as fit() trains; "fp32" without autocast. Peak memory: the highest sum of live CPU allocations the PyTorch profiler
records during one extra step (``profile_memory``), above what was allocated before it (weights and input).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any

HF_IMPLS = ("eager", "grouped_mm", "batched_mm")
# batched_mm gathers one copy of the chosen expert's weights PER (token, slot): T·k·(3·d·d_ff) floats, plus their
# gradients. Above this many bytes it is not run (and the notes say so): at T=4096, d=256, d_ff=512 it would take
# ~6 GB — more than this machine can spare, and far slower than the other two anyway.
BATCHED_MM_MAX_BYTES = 1 << 30


def _ours(d: int, d_ff: int, experts: int, top_k: int, impl: str = "auto"):
    from ..model.config import ModelConfig
    from ..model.moe import MoEFFN

    cfg = ModelConfig(vocab_size=32, d_model=d, n_layers=1, n_heads=1, activation="swiglu", norm="rmsnorm",
                      position="rope", bias=False, moe_experts=experts, moe_expert_d_ff=d_ff, moe_top_k=top_k,
                      moe_router="softmax", moe_renormalize=True, moe_balance="none", moe_impl=impl)
    return MoEFFN(cfg, 0)


def _hf(d: int, d_ff: int, experts: int, top_k: int, impl: str):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    cfg = MixtralConfig(hidden_size=d, intermediate_size=d_ff, num_local_experts=experts, num_experts_per_tok=top_k,
                        router_jitter_noise=0.0, hidden_act="silu")
    cfg._experts_implementation = impl  # "eager" = the class's own forward
    return MixtralSparseMoeBlock(cfg)


def _copy_weights(ours, hf) -> None:
    """Ours -> HF: the router (E, d), gate_up (E, 2·d_ff, d) gate rows first, down (E, d, d_ff): the same layouts."""
    import torch

    with torch.no_grad():
        hf.gate.weight.copy_(ours.router.weight)
        hf.experts.gate_up_proj.copy_(ours.experts.w1)
        hf.experts.down_proj.copy_(ours.experts.w2)


def _peak_bytes(step) -> int | None:
    """Peak of live CPU allocations during ``step()`` (profiler memory events), above the allocations before it."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        events = prof.profiler.kineto_results.events()
        mem = sorted((e.start_ns(), e.nbytes()) for e in events
                     if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    except Exception:  # an old or stripped profiler: no number rather than a wrong one
        return None
    cur = peak = 0
    for _, n in mem:
        cur += n
        peak = max(peak, cur)
    return int(peak)


def _time(module, x, g, dtype: str, repeats: int) -> dict[str, Any]:
    import torch

    def step() -> None:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
        with ctx:
            y = module(x)
        (y.float() * g).sum().backward()
        x.grad = None
        module.zero_grad(set_to_none=True)

    step()  # warm-up (oneDNN builds its kernels for these shapes)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times), "all_s": times, "peak_bytes": _peak_bytes(step)}


def layer_benchmark(tokens: int, d: int, d_ff: int, experts: int, top_k: int, repeats: int = 5,
                    dtypes: tuple[str, ...] = ("fp32", "bf16"), seed: int = 0) -> dict[str, Any]:
    """Tokens/s and peak memory of one MoE FFN forward+backward: ours (default kernel choice, and the per-expert
    loop) vs every Hugging Face experts implementation that runs here. ``speed_vs_hf[dtype]`` = ours / HF's
    fastest (tokens/s); ``layer_speed_vs_hf`` = the bf16 figure (the goal's)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        ours = {"ours": _ours(d, d_ff, experts, top_k), "ours-loop": _ours(d, d_ff, experts, top_k, impl="loop")}
        ours["ours-loop"].load_state_dict(ours["ours"].state_dict())
        hf, notes = {}, []
        for impl in HF_IMPLS:
            gathered = tokens * top_k * 3 * d * d_ff * 4
            if impl == "batched_mm" and gathered > BATCHED_MM_MAX_BYTES:
                notes.append(f"hf-batched_mm: not run — it gathers the chosen expert's weights per token "
                             f"({gathered / 2**30:.1f} GiB in fp32 at this shape, over the "
                             f"{BATCHED_MM_MAX_BYTES / 2**30:.0f} GiB cap)")
                continue
            try:
                m = _hf(d, d_ff, experts, top_k, impl)
            except Exception as exc:  # an implementation this transformers version does not have
                notes.append(f"hf-{impl}: not available ({type(exc).__name__}: {exc})")
                continue
            _copy_weights(ours["ours"], m)
            hf[f"hf-{impl}"] = m
        gen = torch.Generator().manual_seed(seed + 1)
        x0 = torch.randn(1, tokens, d, generator=gen)
        g = torch.randn(1, tokens, d, generator=gen)
        with torch.no_grad():
            ref = ours["ours"](x0)
            parity = {name: float((m(x0) - ref).abs().max()) for name, m in hf.items()}
        rows: dict[str, dict[str, Any]] = {}
        for dtype in dtypes:
            for name, m in {**ours, **hf}.items():
                x = x0.clone().requires_grad_(True)
                try:
                    r = _time(m, x, g, dtype, repeats)
                except Exception as exc:
                    notes.append(f"{name} {dtype}: failed ({type(exc).__name__}: {exc})")
                    continue
                r["tokens_per_s"] = tokens / r["seconds"]
                rows.setdefault(dtype, {})[name] = r
        speed = {}
        for dtype, by in rows.items():
            hf_best = max((r["tokens_per_s"] for n, r in by.items() if n.startswith("hf-")), default=None)
            if hf_best and "ours" in by:
                speed[dtype] = by["ours"]["tokens_per_s"] / hf_best
        fastest = {dtype: max((n for n in by if n.startswith("hf-")), key=lambda n: by[n]["tokens_per_s"], default=None)
                   for dtype, by in rows.items()}
    finally:
        torch.set_num_threads(threads)
    return {"shape": {"tokens": tokens, "d_model": d, "expert_d_ff": d_ff, "experts": experts, "top_k": top_k,
                      "activation": "swiglu"},
            "reference": "transformers MixtralSparseMoeBlock", "repeats": repeats, "threads": 1,
            "parity_max_abs": parity, "output_abs_mean": float(ref.abs().mean()), "results": rows, "hf_fastest": fastest, "speed_vs_hf": speed,
            "layer_speed_vs_hf": speed.get("bf16"), "notes": notes}
