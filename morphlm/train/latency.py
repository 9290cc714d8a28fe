"""The latency harness: how `morphlm eval --latency` and every compression arm measure speed.

Protocol: a fixed intra-op thread count (default 1), ``warmup`` untimed forward passes, then ``runs`` timed
passes of a fixed random batch under ``torch.inference_mode()``; we report median and p90 wall time in
milliseconds (plus mean and min). Timing uses ``time.perf_counter`` around a full forward, with
``torch.cuda.synchronize`` on CUDA. Benchmarks call this; tests only check that it runs and is sane.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Callable

import torch
from torch import nn


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Temporarily set torch's intra-op thread count (None: leave it)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def example_batch(vocab_size: int, batch_size: int, seq_len: int, *, seed: int = 0,
                  device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, max(vocab_size, 8), (batch_size, seq_len), generator=g)
    return {"input_ids": ids.to(device)}


def time_callable(fn: Callable[[], object], *, warmup: int = 10, runs: int = 100, cuda: bool = False,
                  on_call: Callable[[], object] | None = None) -> dict:
    """Median / p90 / mean / min milliseconds of ``fn()`` over ``runs`` timed calls after ``warmup`` calls;
    ``on_call()`` (e.g. a progress bar's update) runs after each call, outside the timed span."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0 (got runs={runs}, warmup={warmup})")
    for _ in range(warmup):
        fn()
        if on_call is not None:
            on_call()
    times = []
    for _ in range(runs):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
        if on_call is not None:
            on_call()
    times.sort()
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    return {"median_ms": statistics.median(times), "p90_ms": p90, "mean_ms": statistics.fmean(times),
            "min_ms": times[0], "runs": runs, "warmup": warmup}


def measure_latency(model: nn.Module, *, vocab_size: int | None = None, batch_size: int = 1, seq_len: int = 128,
                    threads: int | None = 1, warmup: int = 10, runs: int = 100, seed: int = 0,
                    batch: dict[str, torch.Tensor] | None = None,
                    on_call: Callable[[], object] | None = None) -> dict:
    """Forward-pass latency of ``model`` (any module taking ``input_ids=``) on one fixed batch.

    ``vocab_size`` defaults to ``model.config.vocab_size``; pass ``batch`` to time other inputs. Returns
    :func:`time_callable`'s dict plus batch_size, seq_len and threads; ``on_call`` as in time_callable."""
    if batch is None:
        if vocab_size is None:
            cfg = getattr(model, "config", None)
            if cfg is None:
                raise ValueError("measure_latency needs vocab_size= (or a model with .config, or batch=)")
            vocab_size = cfg.vocab_size
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        batch = example_batch(vocab_size, batch_size, seq_len, seed=seed, device=device)
    cuda = any(t.is_cuda for t in batch.values())
    was_training = model.training
    model.eval()
    try:
        with torch_threads(threads), torch.inference_mode():
            out = time_callable(lambda: model(**batch), warmup=warmup, runs=runs, cuda=cuda, on_call=on_call)
    finally:
        model.train(was_training)
    b, t = next(iter(batch.values())).shape[:2]
    return {**out, "batch_size": int(b), "seq_len": int(t), "threads": threads}
