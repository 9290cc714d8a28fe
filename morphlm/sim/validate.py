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

from .cost import step_cost
from .hardware import HardwareProfile
from .space import Layout, from_model_config

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

    from .hardware import clock

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
             dtypes: tuple[str, ...] = ("fp32", "bf16"), steps: int = 5) -> dict[str, Any]:
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
