"""Check the simulator against measured training steps it was not calibrated on.

:func:`validate` builds small dense models (the real TransformerLM), runs fit()'s step — forward under the same
autocast, the model's own loss, backward, gradient clipping, fused AdamW, zero_grad — on this CPU, takes the best
of a few timed steps (as the calibration takes the best of its micro-benchmarks: on a shared machine the minimum
is the least disturbed figure), and compares it with :func:`.cost.step_cost` for the same shape on one device.
The calibration only ever saw single operators (matmuls, a copy, an add, a tiny-add chain, a few SDPA shapes), never
a model, so every config here is held out. The result records the load average: on a machine shared with other
work the measured steps (thread CPU time, not wall time) still vary by ~10–30% from run to run.
"""

from __future__ import annotations

import math
import os
from typing import Any

from .cost import ffn_step_time, step_cost
from .hardware import HardwareProfile, clock
from .space import Layout, SimModel, from_model_config

# (name, ModelConfig fields, batch) — none of these shapes is a calibration shape
HELD_OUT: list[tuple[str, dict[str, Any], int]] = [
    ("d64-L2-T128", dict(d_model=64, n_layers=2, n_heads=2, vocab_size=512, max_seq_len=128), 8),
    ("d128-L4-T128", dict(d_model=128, n_layers=4, n_heads=4, vocab_size=2048, max_seq_len=128), 8),
    ("d192-L3-T256", dict(d_model=192, n_layers=3, n_heads=4, vocab_size=1024, max_seq_len=256), 4),
    ("d256-L2-T64", dict(d_model=256, n_layers=2, n_heads=4, vocab_size=4096, max_seq_len=64), 16),
]
QUICK: list[tuple[str, dict[str, Any], int]] = [HELD_OUT[0], HELD_OUT[1]]


def measure_step(fields: dict[str, Any], batch: int, dtype: str, steps: int = 3, seed: int = 0) -> float:
    """Best-of-``steps`` seconds of one training step (after one warm-up step) of a fresh model on the CPU (the
    calibration's clock: thread CPU time with one thread, else wall time)."""
    import torch

    from ..model import ModelConfig, TransformerLM
    from ..train.optim import TrainArgs, build_optimizer
    from ..train.steps import autocast

    torch.manual_seed(seed)
    cfg = ModelConfig(**fields)
    model = TransformerLM(cfg)
    model.train()
    device = torch.device("cpu")
    args = TrainArgs(precision=dtype)
    opt = build_optimizer(model, args, device)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (batch, cfg.max_seq_len + 1), generator=gen)
    batch_d = {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}

    def step() -> None:
        with autocast(device, dtype):
            loss = model(**batch_d).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    timer = clock("cpu", torch.get_num_threads())
    step()
    best = math.inf
    for _ in range(steps):
        t0 = timer()
        step()
        best = min(best, timer() - t0)
    return best


def validate(profile: HardwareProfile, configs: list[tuple[str, dict[str, Any], int]] | None = None,
             dtypes: tuple[str, ...] = ("fp32", "bf16"), steps: int = 8) -> dict[str, Any]:
    """Measured vs predicted step time of each held-out config and dtype; returns the rows and the MAPE (mean
    absolute percentage error, in %)."""
    import torch

    from ..model import ModelConfig

    configs = HELD_OUT if configs is None else configs
    threads = torch.get_num_threads()
    if profile.threads:
        torch.set_num_threads(profile.threads)
    rows = []
    try:
        for name, fields, batch in configs:
            sim = from_model_config(ModelConfig(**fields))
            layout = Layout(micro_batch_size=batch)
            for dtype in dtypes:
                measured = measure_step(fields, batch, dtype, steps=steps)
                predicted = step_cost(sim, layout, profile, dtype).time_s
                rows.append({"config": name, "dtype": dtype, "batch": batch, "measured_s": measured,
                             "predicted_s": predicted, "error": predicted / measured - 1.0})
    finally:
        torch.set_num_threads(threads)
    mape = 100.0 * sum(abs(r["error"]) for r in rows) / len(rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"profile": profile.name, "profile_date": profile.date, "threads": profile.threads, "rows": rows,
            "mape": mape, "load_average_1min": load, "cores": os.cpu_count(),
            "protocol": "best of %d timed steps after one warm-up; fit()'s step (autocast, loss, backward, "
                        "clip, fused AdamW, zero_grad); configs never used for calibration" % steps}


# routed FFN layers: (name, d_model, experts, top_k, expert_d_ff, tokens)
MOE_LAYERS: list[tuple[str, int, int, int, int, int]] = [
    ("moe-d128-E8-k1", 128, 8, 1, 256, 1024),
    ("moe-d128-E8-k2", 128, 8, 2, 256, 1024),
    ("moe-d256-E4-k1", 256, 4, 1, 512, 512),
    ("moe-d64-E16-k2", 64, 16, 2, 128, 2048),
]


def _reference_moe(d: int, experts: int, top_k: int, width: int, seed: int):
    """A routed GELU FFN in plain torch, the dispatch recipe the simulator prices: router in fp32, softmax top-k,
    a stable sort of the expert ids, one matmul pair per expert over its contiguous rows, the inverse permutation
    and a weighted sum over the k choices (deterministic combine)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class RefMoE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(seed)
            self.router = nn.Parameter(torch.randn(experts, d, generator=g) * d ** -0.5)
            self.w1 = nn.Parameter(torch.randn(experts, width, d, generator=g) * d ** -0.5)
            self.w2 = nn.Parameter(torch.randn(experts, d, width, generator=g) * width ** -0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (n, d)
            n = x.shape[0]
            with torch.autocast("cpu", enabled=False):
                probs = F.linear(x.float(), self.router).softmax(-1)  # (n, E) fp32
            gate, idx = probs.topk(top_k, dim=-1)  # (n, k)
            order = idx.reshape(-1).argsort(stable=True)  # (n·k,)
            counts = torch.bincount(idx.reshape(-1), minlength=experts).tolist()
            self.last_counts = counts
            xs = x.index_select(0, order // top_k)  # (n·k, d), grouped by expert
            outs = [F.linear(F.gelu(F.linear(part, w1)), w2)
                    for part, w1, w2 in zip(xs.split(counts), self.w1.unbind(0), self.w2.unbind(0))]
            y = torch.cat(outs)  # (n·k, d)
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(order.numel())
            y = y.index_select(0, inverse).view(n, top_k, d)
            return (y * gate.unsqueeze(-1).to(y.dtype)).sum(1)  # (n, d)

    return RefMoE()


def measure_moe_layer(d: int, experts: int, top_k: int, width: int, tokens: int, dtype: str, steps: int = 5,
                      seed: int = 0) -> list[tuple[float, float]]:
    """(seconds, new-shape rate) of each of ``steps`` training steps (forward + backward + fused AdamW) of
    :func:`_reference_moe` on ``tokens`` tokens, a fresh batch each step (as training sees: the expert loads, hence
    the matmul shapes, change), after one warm-up step. The rate is the share of the step's experts whose row count
    had not occurred before in this process (the kernel library caches one kernel per shape)."""
    import torch

    layer = _reference_moe(d, experts, top_k, width, seed)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3, fused=True)
    gen = torch.Generator().manual_seed(seed + 1)
    batches = iter([torch.randn(tokens, d, generator=gen) for _ in range(steps + 1)])
    seen = _SEEN_ROWS.setdefault((d, width, dtype), set())

    def step() -> float:
        x = next(batches)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = layer(x).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        new = {c for c in layer.last_counts if c > 0} - seen
        seen.update(layer.last_counts)
        return len(new) / experts

    timer = clock("cpu", torch.get_num_threads())
    step()
    out = []
    for _ in range(steps):
        t0 = timer()
        rate = step()
        out.append((timer() - t0, rate))
    return out


_SEEN_ROWS: dict[tuple, set] = {}  # (d, width, dtype) -> expert row counts this process has run


def validate_moe_layer(profile: HardwareProfile, layers: list[tuple[str, int, int, int, int, int]] | None = None,
                       dtypes: tuple[str, ...] = ("fp32", "bf16"), steps: int = 8) -> dict[str, Any]:
    """Measured vs predicted time of routed FFN layers alone (the reference layer above, a training step each):
    the expert part of the cost model checked where no routed model is needed. Rows and MAPE (%)."""
    import torch

    layers = MOE_LAYERS if layers is None else layers
    threads = torch.get_num_threads()
    if profile.threads:
        torch.set_num_threads(profile.threads)
    rows = []
    try:
        for name, d, experts, top_k, width, tokens in layers:
            sim = SimModel(n_layers=1, d_model=d, n_heads=1, experts=experts, top_k=top_k, expert_d_ff=width,
                           seq_len=tokens, activation="gelu")
            for dtype in dtypes:
                per_step = measure_moe_layer(d, experts, top_k, width, tokens, dtype, steps=steps)
                measured = sum(t for t, _ in per_step) / len(per_step)
                predicted = sum(ffn_step_time(sim, profile, dtype, tokens, shape_miss_rate=r)
                                for _, r in per_step) / len(per_step)
                rows.append({"config": name, "dtype": dtype, "tokens": tokens, "measured_s": measured,
                             "predicted_s": predicted, "error": predicted / measured - 1.0,
                             "new_shape_rate": sum(r for _, r in per_step) / len(per_step)})
    finally:
        torch.set_num_threads(threads)
    return {"rows": rows, "mape": 100.0 * sum(abs(r["error"]) for r in rows) / len(rows),
            "protocol": "a routed GELU FFN layer alone (router fp32, sorted dispatch, per-expert matmuls, "
                        "weighted combine), forward + backward + fused AdamW, a fresh batch per step; mean of %d "
                        "steps, each predicted with its observed share of new expert row counts" % steps}
