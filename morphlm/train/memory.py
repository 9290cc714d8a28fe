"""Training memory, estimated before the first step (next to the FLOPs ruler in flops.py).

A run that cannot fit should fail at once with numbers, not after minutes of swapping or an out-of-memory
kill. :func:`estimate_training_memory` counts, for one process and one micro-batch of ``B`` sequences of
``T`` tokens (an estimate, accurate to roughly ±25% for this model; allocator overhead and temporaries are
not modelled):

* parameters, gradients and AdamW's two moments: 4 + 4 + 8 = 16 bytes per trainable parameter (fp32;
  bf16 autocast keeps fp32 weights), 4 bytes per frozen one (divided over the processes under FSDP);
* activations kept for the backward pass, per layer and token (pre-norm block; ``k`` counts the tensors
  a block saves): the norm inputs and outputs (4·d), q/k/v (3·d), the attention output before and after
  its projection (2·d) and the residual (d) — 10·d — plus the FFN's hidden activations: 2·d_ff (fc1 output,
  activation output; 4·d_ff for SwiGLU's two branches and their product), at 4 bytes (fp32) or 2 (bf16):
  ``B·T·L·(10·d + k_ff·d_ff)·bytes``;
* the attention matrix on the eager (math) path: ``B·H·T²·L`` elements for the scores, the softmax
  output and the dropped-out probabilities (3 tensors, plus a 1-byte dropout mask). The fused kernels of
  ``scaled_dot_product_attention`` (CUDA; CPU without dropout) never hold it; the math path runs on CPU
  when dropout is on, and for callers that ask for attention scores (``eager=True``);
* the output head: logits, log-probabilities and their gradient, 3·V floats per token (fp32), plus the
  embedding output (d per token).

:func:`available_memory` is what the device can still give (CPU: ``MemAvailable`` of /proc/meminfo, capped by
a cgroup memory limit; CUDA: ``torch.cuda.mem_get_info``); :func:`check_fits` refuses a run whose estimate
exceeds it, printing both and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..model.config import ModelConfig
from .steps import resolve_precision

__all__ = ["MemoryEstimate", "InsufficientMemory", "estimate_training_memory", "available_memory", "check_fits"]


class InsufficientMemory(ValueError):
    """The estimated memory of a run exceeds what the device has available; the message gives the numbers
    and what to change."""


@dataclass
class MemoryEstimate:
    """Bytes one process needs to train (see the module docstring for the formula)."""

    params: int
    grads: int
    optimizer: int
    activations: int
    attention: int  # part of ``activations``: the T×T attention matrices of the eager path (0 on fused kernels)
    batch: int  # sequences per micro-batch
    seq_len: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations

    def describe(self) -> str:
        attn = f", of which T×T attention {gib(self.attention)}" if self.attention else ""
        return (f"parameters {gib(self.params)} + gradients {gib(self.grads)} + AdamW moments "
                f"{gib(self.optimizer)} + activations {gib(self.activations)} for {self.batch} sequence(s) × "
                f"{self.seq_len} tokens per micro-batch{attn}")


def gib(n: float) -> str:
    """Bytes as a short human number (GiB, MiB or KiB)."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def estimate_training_memory(cfg: ModelConfig, batch: int, seq_len: int, *, n_params: int | None = None,
                             n_trainable: int | None = None, precision_bytes: int = 4, eager: bool = False,
                             shards: int = 1) -> MemoryEstimate:
    """Estimated training memory of ``cfg`` on one process for micro-batches of ``batch`` × ``seq_len`` tokens.

    ``n_params``/``n_trainable``: the model's parameter counts (default: counted from ``cfg`` on the meta
    device, all trainable); ``precision_bytes``: bytes per activation (4 fp32, 2 under bf16 autocast);
    ``eager``: attention runs the math path (T×T matrices held); ``shards``: processes the parameters,
    gradients and optimizer state are split over (FSDP), 1 otherwise."""
    if n_params is None:
        from ..model import TransformerLM

        with torch.device("meta"):
            n_params = TransformerLM(cfg).num_parameters()
    n_trainable = n_params if n_trainable is None else n_trainable
    shards = max(int(shards), 1)
    params = 4 * n_params // shards
    grads = 4 * n_trainable // shards
    optimizer = 8 * n_trainable // shards
    d, d_ff, L, H = cfg.d_model, cfg.d_ff, cfg.depth, cfg.n_heads  # depth: every looped run
    k_ff = 4 if cfg.activation == "swiglu" else 2
    tokens = int(batch) * int(seq_len)
    iter_adaln = 7 * d if cfg.loop_repeats is not None else 0  # IterAdaLN's conditioning c and six modulations
    layers = tokens * L * (12 * d + k_ff * d_ff + iter_adaln) * precision_bytes
    head_width = cfg.vocab_size if cfg.head in ("lm", "mlm") else 0
    head = tokens * (4 * head_width * 4 + 3 * d * precision_bytes)
    attention = 0
    if eager:
        attention = int(batch) * H * int(seq_len) ** 2 * L * (3 * precision_bytes + 1)
    return MemoryEstimate(params=params, grads=grads, optimizer=optimizer, activations=layers + head + attention,
                          attention=attention, batch=int(batch), seq_len=int(seq_len))


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_headroom() -> int | None:
    """Bytes this process's cgroup may still allocate (v2, else v1), or None without a limit."""
    limit = _read_int(Path("/sys/fs/cgroup/memory.max"))
    used = _read_int(Path("/sys/fs/cgroup/memory.current"))
    if limit is None:
        limit = _read_int(Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        used = _read_int(Path("/sys/fs/cgroup/memory/memory.usage_in_bytes"))
    if limit is None or used is None or limit >= 1 << 60:  # "max", or v1's "unlimited" 2**63-4096
        return None
    return max(limit - used, 0)


def available_memory(device: torch.device) -> int | None:
    """Bytes ``device`` can still allocate, or None when it cannot be told (then nothing is refused)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        return None
    headroom = _cgroup_headroom()
    if avail is None:
        return headroom
    return avail if headroom is None else min(avail, headroom)


def check_fits(cfg: ModelConfig, *, per_process_batch: int, seq_len: int, micro_batch: int | None,
               device: torch.device, precision: str = "auto", dropout: float | None = None,
               n_params: int | None = None, n_trainable: int | None = None, resident: int = 0, shards: int = 1,
               where: str = "this run") -> MemoryEstimate | None:
    """Refuse (:class:`InsufficientMemory`) a run whose estimate exceeds :func:`available_memory` of ``device``.

    ``resident``: bytes of the estimate already allocated on ``device`` (a model built on the CPU before
    training on it), which the available figure no longer includes. Returns the estimate, or None when the
    available memory is unknown."""
    available = available_memory(device)
    if available is None:
        return None
    micro = int(micro_batch or per_process_batch)
    bf16 = resolve_precision(device, precision) == "bf16"
    drop = cfg.dropout if dropout is None else dropout
    eager = device.type == "cpu" and drop > 0

    def estimate(b: int, t: int) -> MemoryEstimate:
        return estimate_training_memory(cfg, b, t, n_params=n_params, n_trainable=n_trainable,
                                        precision_bytes=2 if bf16 else 4, eager=eager, shards=shards)

    if n_params is None:
        from ..model import TransformerLM

        with torch.device("meta"):
            n_params = TransformerLM(cfg).num_parameters()
    est = estimate(micro, seq_len)
    needed = est.total - resident
    if needed <= available:
        return est
    fixes = []
    fitting = [b for b in range(micro - 1, 0, -1)
               if per_process_batch % b == 0 and estimate(b, seq_len).total - resident <= available]
    if fitting:
        fixes.append(f"split the batch into micro-batches with --micro-batch-size {fitting[0]} (same run, "
                     f"gradient accumulation)")
    else:
        lo, hi = 0, seq_len  # the longest sequence one sequence per micro-batch fits with
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if estimate(1, mid).total - resident <= available:
                lo = mid
            else:
                hi = mid - 1
        fixes.append(f"lower --seq-len (about {lo} tokens fit with --micro-batch-size 1)" if lo > 0 else
                     "use a smaller model (the parameters and optimizer state alone do not fit)")
    fixes.append("lower --batch-size")
    raise InsufficientMemory(
        f"{where} needs about {gib(needed)} more memory on {device.type} but only {gib(available)} is available "
        f"(estimate: {est.describe()}); {'; or '.join(fixes)}. The estimate is approximate: "
        f"--no-check-memory skips this check")
