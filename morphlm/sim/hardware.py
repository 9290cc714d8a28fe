"""Hardware profiles for the cost simulator: what one device can do, per dtype, and how devices talk.

A profile holds, per dtype, a **matmul efficiency curve** and the machine's memory and interconnect figures:

* ``peak_flops`` per dtype, the MFU denominator: the best matmul rate measured (CPU) or the data-sheet peak.
* matmul time ``t(m, k, n) = 2mkn / (peak · eff) + t0`` with ``eff = e_max · x / (x + x_half)`` and
  ``x = 3 / (1/m + 1/k + 1/n)`` (the harmonic mean of the three dimensions: the smallest one starves the
  kernel). On a measured profile ``peak``, ``x_half`` and ``t0`` are fitted by linear least squares to
  micro-benchmarks (the per-FLOP time is linear in ``1/x``: ``t/F = 1/peak + (x_half/peak)/x + t0/F``; a fresh
  output's bytes add ``m·n·bytes/write_bw``) and ``e_max = 1`` — the fitted ``peak`` is the curve's asymptote,
  trustworthy only over the measured shapes; a spec profile takes the data-sheet peak and states its derating.
* memory-bound work (norms, activations, softmax, the optimizer) moves bytes at ``elementwise_bw``; a large copy
  into an existing tensor gives ``mem_bw``; every framework operator pays ``op_overhead_s`` (dispatch, autograd
  bookkeeping, kernel launch) — on a CPU in eager mode that is what dominates tiny models.
* attention (the fused SDPA kernel, forward + backward, causal) costs ``call_s + head_s·BH + row_s·BH·T +
  flop_s·F`` per call, BH the (batch × heads) it runs, F = 6·BH·T²·Dh/2 its FLOPs (half the T×T square) — on a
  CPU all four fitted to SDPA micro-benchmarks (the bf16 CPU backward is far from FLOP-bound: its per-head and
  per-row terms dominate at small T); on a spec profile derived from the GEMM rate.
* interconnect: bandwidth per direction per device and a per-message latency (None on a one-device profile).
* ``new_shape_s``: the extra cost of an expert (a GELU FFN: two matmuls and the activation, forward + backward)
  at a row count not seen before — fresh row counts minus the same shapes again, the lower quartile. On this CPU
  oneDNN builds a bf16 kernel per shape (~1 ms per matmul, ~6–8 per expert step); routed experts meet new row
  counts whenever their loads change, which :mod:`.cost` charges through ``shape_miss_rate``.

``cpu-local`` is measured on the machine by :func:`calibrate` (``morphlm simulate --calibrate``), written to the
cache; the committed ``profiles/cpu-local.json`` is one such run with its date and torch version. ``h100`` and
``h200`` come from NVIDIA's data sheets (stated in their ``source`` field).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
DTYPES = ("fp32", "bf16")
ATTENTION_TERMS = ("call_s", "head_s", "row_s", "flop_s")


class SimError(ValueError):
    """Bad input to the simulator; the message names the field and the fix."""


@dataclass
class MatmulCurve:
    """``t(m,k,n) = 2mkn / (peak_flops · e_max · x/(x+half_dim)) + m·n·bytes / write_bw + overhead_s``, x the
    harmonic-mean dimension; ``write_bw`` prices the fresh output (on a CPU a large new tensor is paid in page
    faults), None when not measured."""

    peak_flops: float
    half_dim: float
    overhead_s: float
    e_max: float = 1.0
    write_bw: float | None = None
    dtype_bytes: int = 2

    def efficiency(self, m: float, k: float, n: float) -> float:
        x = harmonic_dim(m, k, n)
        return self.e_max * x / (x + self.half_dim)

    def time(self, m: float, k: float, n: float, count: float = 1.0) -> float:
        """Seconds for ``count`` matmuls of (m×k)·(k×n)."""
        if min(m, k, n) <= 0 or count <= 0:
            return 0.0
        flops = 2.0 * m * k * n
        out = m * n * self.dtype_bytes / self.write_bw if self.write_bw else 0.0
        return count * (flops / (self.peak_flops * self.efficiency(m, k, n)) + out + self.overhead_s)


def harmonic_dim(m: float, k: float, n: float) -> float:
    return 3.0 / (1.0 / m + 1.0 / k + 1.0 / n)


@dataclass
class HardwareProfile:
    name: str
    source: str  # "measured ..." or "spec sheet ..."
    memory_bytes: float  # capacity per device
    mem_bw: float  # bytes/s, a large device-to-device-memory copy (read + write counted)
    elementwise_bw: float  # bytes/s achieved by elementwise operators (read + write counted)
    op_overhead_s: float  # fixed seconds per framework operator
    peak_flops: dict[str, float]  # per dtype: the MFU denominator (best measured matmul rate, or the spec peak)
    matmul: dict[str, MatmulCurve]  # per dtype
    attention: dict[str, dict[str, float]]  # per dtype: call_s, head_s, row_s, flop_s (fwd + bwd, causal)
    interconnect_bw: float | None = None  # bytes/s per direction per device; None: one device only
    # per dtype: extra seconds of an expert FFN step (forward + backward) at a row count the kernel library has not
    # seen (oneDNN builds a bf16 kernel per shape on a CPU); routed experts meet new row counts as loads change
    new_shape_s: dict[str, float] = field(default_factory=dict)
    interconnect_latency_s: float | None = None
    devices_per_node: int = 1
    date: str | None = None
    torch: str | None = None
    threads: int | None = None  # CPU threads the measurements used
    load_average: float | None = None  # the machine's 1-minute load average when measured (shared machines vary)
    measurements: list[dict[str, Any]] = field(default_factory=list)

    def peak(self, dtype: str) -> float:
        if dtype not in self.peak_flops:
            raise SimError(f"dtype {dtype!r}: profile {self.name!r} has peaks for {sorted(self.peak_flops)}")
        return self.peak_flops[dtype]

    def curve(self, dtype: str) -> MatmulCurve:
        if dtype not in self.matmul:
            raise SimError(f"dtype {dtype!r}: profile {self.name!r} has {sorted(self.matmul)}; pick one of those")
        return self.matmul[dtype]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "profile") -> "HardwareProfile":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SimError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and f.name not in data]
        if missing:
            raise SimError(f"{where}: missing field(s) {missing}")
        try:
            curves = {k: MatmulCurve(**v) for k, v in data["matmul"].items()}
        except TypeError as exc:
            raise SimError(f"{where}: bad matmul curve ({exc}); each dtype needs peak_flops, half_dim, "
                           "overhead_s (and optionally e_max)") from None
        for dt, coef in data.get("attention", {}).items():
            if not isinstance(coef, dict) or set(coef) != set(ATTENTION_TERMS):
                raise SimError(f"{where}: attention[{dt!r}] needs exactly {list(ATTENTION_TERMS)}")
        prof = cls(**{**data, "matmul": curves})
        for name in ("memory_bytes", "mem_bw", "elementwise_bw"):
            if not (isinstance(getattr(prof, name), (int, float)) and getattr(prof, name) > 0):
                raise SimError(f"{where}: {name} must be a positive number")
        return prof


def builtin_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


def cache_path(name: str = "cpu-local") -> Path:
    env = os.environ.get("MORPHLM_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "morphlm"
    return root / "sim" / f"{name}.json"


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """A profile by name (``cpu-local``: the cache's calibration when there is one, else the committed one;
    ``h100``, ``h200``) or from a JSON file."""
    text = str(name_or_path)
    path = Path(text)
    if text.endswith(".json"):
        if not path.is_file():
            raise SimError(f"hardware profile {text} does not exist; give a JSON file or one of {builtin_names()}")
    elif text == "cpu-local" and cache_path().is_file():
        path = cache_path()
    else:
        path = PROFILE_DIR / f"{text}.json"
        if not path.is_file():
            raise SimError(f"unknown hardware {text!r}; use one of {builtin_names()} or a profile JSON file "
                           "(morphlm simulate --calibrate writes cpu-local)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SimError(f"hardware profile {path} is not valid JSON: {exc}") from None
    return HardwareProfile.from_dict(data, where=str(path))


# ---------------------------------------------------------------------------------------------- calibration
CAL_SHAPES = [(64, 64, 64), (128, 128, 128), (512, 128, 128), (512, 256, 256), (1024, 128, 512),
              (1024, 512, 128), (2048, 256, 256), (2048, 256, 1024), (1024, 1024, 1024), (4096, 128, 2048),
              (2048, 64, 2048), (4096, 256, 1024), (256, 2048, 256)]
QUICK_SHAPES = [(64, 64, 64), (256, 128, 128), (1024, 256, 256), (1024, 512, 512)]


def clock(device_type: str, threads: int | None):
    """The timer: on a CPU with one thread, the thread's CPU time (``time.thread_time``: user + system, page
    faults included), which other processes sharing the cores do not inflate — it equals wall time when the thread
    owns its core; otherwise wall time."""
    return time.thread_time if device_type == "cpu" and threads == 1 else time.perf_counter


def _best(fn, repeats: int, sync, timer=time.perf_counter) -> float:
    fn()
    sync()
    best = math.inf
    for _ in range(repeats):
        t0 = timer()
        fn()
        sync()
        best = min(best, timer() - t0)
    return best


def relative_lstsq(features: list[tuple[float, ...]], times: list[float], keep: int = 0) -> list[float]:
    """Non-negative coefficients c with ``times ≈ features · c``, least squares on relative residuals (each row
    divided by its time, so small and large measurements weigh alike); a coefficient that comes out negative is
    dropped and the rest refitted (column ``keep`` always stays)."""
    import numpy as np

    t = np.asarray(times, dtype=float)
    A = np.asarray(features, dtype=float) / t[:, None]
    scale = np.maximum(np.abs(A).max(axis=0), 1e-300)
    A = A / scale
    y = np.ones(len(t))
    active = list(range(A.shape[1]))
    while True:
        coef, *_ = np.linalg.lstsq(A[:, active], y, rcond=None)
        if (coef > 0).all() or len(active) == 1:
            break
        worst = min((c, a) for a, c in zip(active, coef) if a != keep)[1]
        active = [a for a in active if a != worst]
    out = [0.0] * A.shape[1]
    for a, c in zip(active, coef):
        out[a] = max(float(c), 0.0) / float(scale[a])
    return out


def fit_curve(points: list[tuple[int, int, int, float]], dtype_bytes: int) -> MatmulCurve:
    """Fit (1/peak, half_dim/peak, 1/write_bw, overhead) to measured ``(m, k, n, seconds)`` — the time is linear in
    them (:func:`relative_lstsq`)."""
    feats = [(2.0 * m * k * n, 2.0 * m * k * n / harmonic_dim(m, k, n), m * n * dtype_bytes, 1.0)
             for m, k, n, _ in points]
    inv_peak, half_over_peak, inv_write, overhead = relative_lstsq(feats, [p[3] for p in points])
    inv_peak = max(inv_peak, 1e-30)
    return MatmulCurve(peak_flops=1.0 / inv_peak, half_dim=half_over_peak / inv_peak, overhead_s=overhead,
                       write_bw=1.0 / inv_write if inv_write > 0 else None, dtype_bytes=dtype_bytes)


def attention_features(heads: float, T: float, Dh: float) -> tuple[float, float, float, float]:
    """(1, BH, BH·T, FLOPs) of a causal SDPA forward + backward — what the attention coefficients multiply."""
    return (1.0, heads, heads * T, 6.0 * heads * T * T * Dh / 2)


def attention_time(coef: dict[str, float], heads: float, T: float, Dh: float) -> float:
    """Seconds of one causal SDPA forward + backward over ``heads`` (batch × heads) of T tokens, head size Dh."""
    f = attention_features(heads, T, Dh)
    return sum(coef[name] * x for name, x in zip(ATTENTION_TERMS, f))


def calibrate(device: str = "cpu", threads: int | None = 1, quick: bool = False, repeats: int = 15,
              write: Path | None = None) -> HardwareProfile:
    """See :func:`_calibrate`; the caller's torch thread count is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    try:
        return _calibrate(device, threads, quick, repeats, write)
    finally:
        torch.set_num_threads(before)


def _calibrate(device: str, threads: int | None, quick: bool, repeats: int, write: Path | None) -> HardwareProfile:
    """Measure this machine: matmul time over several shapes per dtype (fp32, bf16) → efficiency curves; memory
    bandwidth by a large copy; elementwise bandwidth (an add of two large tensors into a fresh one); the
    per-operator overhead (a tiny add, forward + backward through autograd, per operator); an expert FFN at fresh
    row counts → the new-shape cost; SDPA forward+backward at a few causal shapes → the attention coefficients.
    Best of ``repeats`` everywhere. Writes the profile JSON to ``write`` when given."""
    import torch
    import torch.nn.functional as F

    from ..provenance import memory_gib, utc_timestamp

    dev = torch.device(device)
    if threads is not None and dev.type == "cpu":
        torch.set_num_threads(int(threads))
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    timer = clock(dev.type, threads)
    best = lambda fn: _best(fn, repeats, sync, timer)  # noqa: E731
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    shapes = QUICK_SHAPES if quick else CAL_SHAPES
    if dev.type == "cuda" and not quick:
        shapes = shapes + [(4096, 4096, 4096), (8192, 8192, 8192)]
    measurements: list[dict[str, Any]] = []
    curves: dict[str, MatmulCurve] = {}
    gen = torch.Generator(device="cpu").manual_seed(0)
    for name, dt in dtypes.items():
        points = []
        for m, k, n in shapes:
            a = torch.randn(m, k, generator=gen).to(dev, dt)
            b = torch.randn(k, n, generator=gen).to(dev, dt)
            t = best(lambda: a @ b)
            points.append((m, k, n, t))
            measurements.append({"op": "matmul", "dtype": name, "m": m, "k": k, "n": n, "seconds": t,
                                 "flops_per_s": 2 * m * k * n / t})
        curves[name] = fit_curve(points, 4 if name == "fp32" else 2)
    numel = (1 << 22) if quick else (1 << 24)
    src = torch.randn(numel, generator=gen).to(dev)
    dst = torch.empty_like(src)
    t_copy = best(lambda: dst.copy_(src))
    mem_bw = 2 * 4 * numel / t_copy
    t_add = best(lambda: torch.add(src, dst))  # a fresh output, as a model's operators make
    elementwise_bw = 3 * 4 * numel / t_add
    measurements += [{"op": "copy", "bytes": 2 * 4 * numel, "seconds": t_copy},
                     {"op": "add", "bytes": 3 * 4 * numel, "seconds": t_add}]
    x = torch.randn(8, device=dev, requires_grad=True)
    n_ops = 32

    def chain():
        h = x
        for _ in range(n_ops):
            h = h + 1.0
        h.sum().backward()

    t_chain = best(chain)
    op_overhead = t_chain / (3 * n_ops)  # forward + a backward counted as 2 operators, as the cost model does
    measurements.append({"op": "tiny-add chain fwd+bwd", "operators": n_ops, "seconds": t_chain})
    new_shape: dict[str, float] = {}
    for name, dt in dtypes.items():  # an expert (GELU FFN) forward + backward at fresh row counts vs again
        w1 = torch.randn(256, 128, generator=gen).to(dev, dt).requires_grad_()
        w2 = torch.randn(128, 256, generator=gen).to(dev, dt).requires_grad_()
        xs = [torch.randn(200 + 3 * i, 128, generator=gen).to(dev, dt).requires_grad_()
              for i in range(8 if quick else 16)]

        def fwd_bwd(x):
            F.linear(F.gelu(F.linear(x, w1)), w2).sum().backward()

        fresh = []
        for x in xs:
            t0 = timer()
            fwd_bwd(x)
            sync()
            fresh.append(timer() - t0)
        again = [best(lambda x=x: fwd_bwd(x)) for x in xs]
        # per expert: the lower quartile over the fresh row counts (other work on the machine only adds time)
        new_shape[name] = max(sorted(f - a for f, a in zip(fresh, again))[len(xs) // 4], 0.0)
        measurements.append({"op": "expert FFN fwd+bwd at new shapes", "dtype": name, "calls": len(xs),
                             "fresh_s": sum(fresh), "cached_s": sum(again)})
    attention: dict[str, dict[str, float]] = {}
    att_shapes = [(2, 4, 128, 32), (8, 2, 128, 32), (2, 4, 256, 32), (1, 4, 512, 32), (4, 4, 64, 64)]
    if quick:
        att_shapes = att_shapes[:4]
    for name, dt in dtypes.items():
        feats, times = [], []
        for B, H, T, Dh in att_shapes:
            q, k, v = (torch.randn(B, H, T, Dh, generator=gen).to(dev, dt).requires_grad_() for _ in range(3))

            def sdpa():
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                y.sum().backward()

            t = best(sdpa)
            feats.append(attention_features(B * H, T, Dh))
            times.append(t)
            measurements.append({"op": "sdpa causal fwd+bwd", "dtype": name, "shape": [B, H, T, Dh], "seconds": t})
        attention[name] = dict(zip(ATTENTION_TERMS, relative_lstsq(feats, times, keep=3)))
    if dev.type == "cuda":
        memory = float(torch.cuda.get_device_properties(dev).total_memory)
        label = torch.cuda.get_device_name(dev)
    else:
        memory = float((memory_gib() or 0.0) * 2**30) or 1.0
        from ..provenance import cpu_model

        label = cpu_model()
    prof = HardwareProfile(
        name="cpu-local" if dev.type == "cpu" else "cuda-local",
        source=f"measured by morphlm.sim.hardware.calibrate on {label}"
               f"{f' with {threads} thread(s)' if dev.type == 'cpu' else ''}{' (quick)' if quick else ''}",
        peak_flops={name: max(m["flops_per_s"] for m in measurements if m.get("dtype") == name
                              and m["op"] == "matmul") for name in dtypes},
        memory_bytes=memory, mem_bw=mem_bw, elementwise_bw=elementwise_bw, op_overhead_s=op_overhead,
        matmul=curves, attention=attention, new_shape_s=new_shape, interconnect_bw=None,
        interconnect_latency_s=None,
        date=utc_timestamp(), torch=torch.__version__,
        load_average=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        threads=threads if dev.type == "cpu" else None,
        measurements=measurements)
    if write is not None:
        from ..io import write_json

        Path(write).parent.mkdir(parents=True, exist_ok=True)
        write_json(write, prof.to_dict())
    return prof

