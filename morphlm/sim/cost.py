"""Operator-level cost of one training step: time, memory per device and MFU (in the spirit of the Pangu Ultra
MoE simulator, Tang et al. 2025, arXiv 2505.04519: build the step bottom-up from operator costs measured on the
hardware, then search the model and layout space with it — a reconstruction; their simulator is not public).

Time of one operator: ``max(compute, memory) + overhead``, where compute = FLOPs / (peak · eff(shape)) from the
profile's measured matmul curve (:mod:`.hardware`), memory = bytes / bandwidth, overhead = the profile's fixed
per-operator cost. Backward = 2× forward for matmuls (dX and dW, each a matmul of the forward's FLOPs) and for
memory-bound operators (read the saved input and the incoming gradient, write the gradient).

One micro-batch on one pipeline stage (per device; ``b`` sequences of ``s`` tokens, ``n = b·s``):

* per block: two norms; QKV (n×d·(d+2·kv)/tp); attention (fused SDPA, causal, from the profile's attention
  coefficients: per call, per head, per row and per FLOP); output projection; residual adds; then either the
  dense FFN (fc1, activation, fc2 — SwiGLU: gate and up) or the MoE FFN: router (n×d·E, fp32), softmax/top-k,
  dispatch permutation, the local experts (E/ep of them; each computes n·k·ep/E rows — dropless: the mean load,
  plus the profile's new-shape cost for row counts the kernel library has not seen; with a capacity factor cf:
  cf × the mean, the padded capacity), combine, and the shared experts as a dense FFN of width
  shared·expert_d_ff;
* embedding gather (+ learned positions) on the first stage; final norm, LM head (vocab-parallel under tp) and
  the cross entropy over the vocabulary (fp32) on the last;
* under bf16 autocast every weight is cast to bf16 once per forward and its gradient back to fp32, and so is
  every matmul input that comes from an fp32 norm (QKV, the FFN's first matmul, the LM head).

Communication (ring algorithms, bandwidth ``bw`` per direction per device, latency ``α`` per message):

* all-reduce of ``S`` bytes over ``p`` ranks: ``2(p−1)/p · S/bw + 2(p−1)·α`` (Patarasuk & Yuan 2009; the
  cost Narayanan et al. 2021, arXiv 2104.04473, §3.3 uses);
* tensor parallelism: 2 all-reduces of the block's activations (n·d) in the forward and 2 in the backward per
  block (Shoeybi et al. 2019, arXiv 1909.08053, §3; Narayanan et al. 2021 §3.3), on the critical path;
* expert parallelism: an all-to-all to dispatch and one to combine (n·k·d activations, a fraction (ep−1)/ep
  leaves the device) in the forward, the same two in the backward (Lepikhin et al. 2020, arXiv 2006.16668);
* pipeline parallelism (1F1B, Narayanan et al. 2021 §2.2): the step takes (m + p − 1) micro-batch slots of the
  slowest stage, i.e. the bubble is (p−1)/(m+p−1) of the pipeline time; each stage boundary sends the n·d
  activation forward and its gradient back per micro-batch;
* data parallelism: one all-reduce of the local gradients (fp32) per step over dp ranks (the expert gradients
  over dp/ep ranks), after the backward unless ``overlap_dp``.

Memory per device: fp32 weights, fp32 gradients and AdamW's two fp32 moments (16 bytes per local parameter,
as fit() keeps them), plus the activations the backward needs — Korthikanti et al. 2022 (arXiv 2205.05198)
§4.1 eq. (2), ``s·b·h·(34 + 5·a·s/h)`` bytes per layer at 16-bit, generalised here to any FFN width, SwiGLU,
routed experts and fp32 (bytes per element p = 2 or 4), with the fused attention kernel (no a·s² term: the
kernel keeps no T×T matrix) and no dropout masks (dropout 0); under tp without sequence parallelism the norms'
and the two block inputs' activations are replicated and the rest divided by tp (their eq. 4); the first
pipeline stage holds min(m, p) micro-batches in flight (their §4.2.3).

MFU = model FLOPs per step (6·N + 12·L·d·T per token, the toolkit's convention) / (step time · devices · peak).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .hardware import HardwareProfile, SimError, attention_time
from .space import Layout, SimModel

BYTES = {"fp32": 4, "bf16": 2}


@dataclass
class StepCost:
    time_s: float
    compute_s: float  # all stages' operator time per step on the slowest stage, bubbles excluded
    bubble_s: float
    comm_s: dict[str, float]
    optimizer_s: float
    memory: dict[str, float]  # bytes per device
    fits: bool
    tokens_per_step: int
    tokens_per_s: float
    model_flops_per_step: float
    mfu: float
    breakdown: dict[str, float] = field(default_factory=dict)  # seconds per micro-batch, by operator kind

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class _Acc:
    """Adds up operator times per kind for one micro-batch on one stage (forward and backward)."""

    def __init__(self, prof: HardwareProfile, dtype: str, shape_miss_rate: float = 1.0) -> None:
        self.prof, self.dtype, self.curve = prof, dtype, prof.curve(dtype)
        self.shape_miss_rate = shape_miss_rate
        self.kinds: dict[str, float] = {}

    def add(self, kind: str, seconds: float) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0.0) + seconds

    def matmul(self, kind: str, m: float, k: float, n: float, count: float = 1.0, dtype: str | None = None,
               cast_input: bool = False) -> None:
        """Forward (m×k)·(k×n) and its backward (dX: m×n·n×k, dW: k×m·m×n). ``cast_input``: under bf16 autocast
        the input arrives in fp32 (a norm's output) and is cast to bf16 (4 + 2 bytes per element), and its
        gradient back (2 + 4)."""
        if count <= 0 or min(m, k, n) <= 0:
            return
        dtype = dtype or self.dtype
        curve = self.prof.curve(dtype)
        t = curve.time(m, k, n, count) + curve.time(m, n, k, count) + curve.time(k, m, n, count)
        self.add(kind, t + 3 * count * self.prof.op_overhead_s)
        if cast_input and dtype == "bf16":
            self.add("casts", count * (12 * m * k / self.prof.elementwise_bw + 2 * self.prof.op_overhead_s))

    def memory(self, kind: str, nbytes: float, ops: float = 1.0) -> None:
        """A memory-bound operator moving ``nbytes`` forward; backward moves 2× and runs 2× the operators."""
        self.add(kind, 3 * nbytes / self.prof.elementwise_bw + 3 * ops * self.prof.op_overhead_s)

    def overhead(self, kind: str, ops: float) -> None:
        """Operators that move no data worth counting (views, splits), forward and backward."""
        self.add(kind, 3 * ops * self.prof.op_overhead_s)


def allreduce_s(nbytes: float, ranks: int, prof: HardwareProfile) -> float:
    if ranks <= 1 or nbytes <= 0:
        return 0.0
    bw, lat = _link(prof)
    return 2 * (ranks - 1) / ranks * nbytes / bw + 2 * (ranks - 1) * lat


def alltoall_s(nbytes: float, ranks: int, prof: HardwareProfile) -> float:
    """All-to-all where each rank holds ``nbytes`` and keeps 1/ranks of it."""
    if ranks <= 1 or nbytes <= 0:
        return 0.0
    bw, lat = _link(prof)
    return (ranks - 1) / ranks * nbytes / bw + (ranks - 1) * lat


def p2p_s(nbytes: float, prof: HardwareProfile) -> float:
    bw, lat = _link(prof)
    return nbytes / bw + lat


def _link(prof: HardwareProfile) -> tuple[float, float]:
    if prof.interconnect_bw is None or prof.interconnect_latency_s is None:
        raise SimError(f"hardware {prof.name!r} is one device (no interconnect figures); use a layout with "
                       "dp=tp=pp=1 or a multi-device profile (h100, h200)")
    return prof.interconnect_bw, prof.interconnect_latency_s


def pipeline_bubble_fraction(pp: int, micro_batches: int) -> float:
    """Idle fraction of a 1F1B pipeline step: (p−1)/(m+p−1) (Narayanan et al. 2021, arXiv 2104.04473, §2.2)."""
    return (pp - 1) / (micro_batches + pp - 1)


def block_time(model: SimModel, layout: Layout, prof: HardwareProfile, dtype: str, acc: _Acc) -> None:
    """One block, one micro-batch, forward + backward, on one device (adds to ``acc``)."""
    b, s, d, tp, ep = layout.micro_batch_size, model.seq_len, model.d_model, layout.tp, layout.ep
    n = b * s
    p = BYTES[dtype]
    acc.memory("norm", 2 * 2 * n * d * p, ops=2)
    acc.matmul("qkv", n, d, (d + 2 * model.kv_dim) / tp, cast_input=True)
    acc.overhead("views", 6)  # split, 3 view+transpose, transpose+reshape back
    coef = prof.attention.get(dtype)
    if coef is None:
        raise SimError(f"hardware {prof.name!r} has no attention coefficients for {dtype}; recalibrate or use "
                       f"one of {sorted(prof.attention)}")
    acc.add("attention", attention_time(coef, b * model.n_heads / tp, s, model.head_dim) + 3 * prof.op_overhead_s)
    acc.matmul("attn_out", n, d / tp, d)
    acc.memory("residual", 2 * 3 * n * d * p, ops=2)
    ffn_time(model, layout, dtype, acc)


def ffn_time(model: SimModel, layout: Layout, dtype: str, acc: _Acc) -> None:
    """The block's FFN, one micro-batch, forward + backward: dense, or routed (router in fp32, routing, dispatch
    and combine, the local experts at the mean load — or the capacity — and the shared experts)."""
    b, s, d, tp, ep = layout.micro_batch_size, model.seq_len, model.d_model, layout.tp, layout.ep
    n, p = b * s, BYTES[dtype]
    if model.moe:
        E, k, f = model.routed, model.top_k, model.expert_width
        acc.matmul("router", n, d, E, dtype="fp32")
        acc.memory("routing", n * E * 4 * 3 + n * k * 8, ops=8)  # softmax, top-k, sort, bincount, cumsum ...
        acc.memory("dispatch", 2 * n * k * d * p * 2, ops=4)  # gather in, weighted combine out
        local = E // ep
        rows = n * k * ep / E * (model.capacity_factor or 1.0)
        _ffn(acc, "experts", rows, d, f / tp, model.activation, p, count=local)
        if model.capacity_factor is None:  # dropless: row counts change with the loads (capacity: fixed shapes)
            miss = acc.prof.new_shape_s.get(dtype, 0.0) * acc.shape_miss_rate
            acc.add("expert_new_shapes", miss * local)
        if model.shared_experts:
            _ffn(acc, "shared_experts", n, d, model.shared_experts * f / tp, model.activation, p)
    else:
        _ffn(acc, "ffn", n, d, model.ffn_width / tp, model.activation, p)


def ffn_step_time(model: SimModel, prof: HardwareProfile, dtype: str, tokens: int,
                  shape_miss_rate: float = 1.0) -> float:
    """One device, one FFN layer alone: forward + backward over ``tokens`` tokens and the AdamW step of its
    parameters (what :func:`morphlm.sim.validate.validate_moe_layer` measures)."""
    acc = _Acc(prof, dtype, shape_miss_rate)
    ffn_time(dataclasses.replace(model, seq_len=tokens), Layout(micro_batch_size=1), dtype, acc)
    n_params = (model.router_params() + (model.routed + model.shared_experts) * model.expert_params()
                if model.moe else model.dense_ffn_params())
    tensors = (1 + (model.routed + model.shared_experts) * model.ffn_mats) if model.moe else model.ffn_mats
    if dtype == "bf16":
        acc.add("casts", 2 * 6 * n_params / prof.elementwise_bw + 2 * tensors * prof.op_overhead_s)
    optimizer = 40 * n_params / prof.mem_bw + 3 * tensors * prof.op_overhead_s
    return sum(acc.kinds.values()) + optimizer


def _ffn(acc: _Acc, kind: str, rows: float, d: float, width: float, activation: str, p: int,
         count: float = 1.0) -> None:
    if rows <= 0:
        return
    gates = 2 if activation == "swiglu" else 1
    acc.matmul(kind, rows, d, gates * width, count=count, cast_input=True)
    acc.memory(kind, count * rows * width * p * (gates + 1), ops=count * (2 if gates == 2 else 1))
    acc.matmul(kind, rows, width, d, count=count)


def local_params(model: SimModel, layout: Layout) -> dict[str, float]:
    """Parameters on the busiest device: the first pipeline stage's blocks (non-expert weights / tp; routed
    experts / (ep·tp); a UniPool pool, used by every layer, is held by every stage — its gradient all-reduce across
    stages is not modelled) and the embeddings / tp (the LM head too when untied or when there is one stage)."""
    tp, ep, pp = layout.tp, layout.ep, layout.pp
    blocks = model.n_layers // pp
    norms = model.norm_params()
    dense = blocks * ((model.layer_params() - norms) / tp + norms)
    if model.pool_size:
        experts = model.pool_size * model.expert_params() / (ep * tp)
    else:
        experts = blocks * model.experts * model.expert_params() / (ep * tp)
    emb = model.embedding_params()
    if pp > 1 and not model.tie_embeddings:
        emb -= model.vocab_size * model.d_model  # the untied head sits on the last stage
    return {"dense": dense, "experts": experts, "embeddings": emb / tp}


def memory_per_device(model: SimModel, layout: Layout, dtype: str) -> dict[str, float]:
    """Bytes on the busiest device (see the module docstring; Korthikanti et al. 2022 §4.1, generalised)."""
    params = local_params(model, layout)
    n_local = sum(params.values())
    p = BYTES[dtype]
    b, s, d, tp = layout.micro_batch_size, model.seq_len, model.d_model, layout.tp
    sbh = b * s * d
    ff = 4 if model.activation == "swiglu" else 2  # FFN hidden tensors kept per token (fc1 out, act out; SwiGLU 4)
    replicated = 4 * sbh  # two norm inputs and the two blocks' (QKV, FFN) inputs
    attn = 4 * sbh  # Q, K, V and the attention output (the projection's input)
    if model.moe:
        k, f = model.top_k * (model.capacity_factor or 1.0), model.expert_width  # rows per token (padded)
        mlp = 2 * k * sbh + ff * k * b * s * f + model.shared_experts * ff * b * s * f
        router = b * s * model.routed * 4 / p  # fp32 logits (expressed in elements of p bytes)
        mlp += router
    else:
        mlp = ff * b * s * model.ffn_width
    per_layer = p * (replicated + (attn + mlp) / tp)
    in_flight = min(layout.micro_batches, layout.pp)
    layers = model.n_layers // layout.pp * model.loop_repeats
    activations = per_layer * layers * in_flight
    head = b * s * (3 * model.vocab_size / tp * 4 + d * p) if layout.pp == 1 else b * s * d * p * in_flight
    return {"params": 4 * n_local, "grads": 4 * n_local, "optimizer": 8 * n_local,
            "activations": activations + head, "local_params": n_local,
            "total": 16 * n_local + activations + head}


def step_cost(model: SimModel, layout: Layout, prof: HardwareProfile, dtype: str = "bf16",
              devices: int | None = None, shape_miss_rate: float = 1.0) -> StepCost:
    """Predicted time, memory and MFU of one optimizer step of ``model`` under ``layout`` on ``prof``.
    ``shape_miss_rate``: the fraction of dropless expert matmuls that meet a row count the kernel library has not
    seen (1: every step, the start of a run; it falls as a long run has seen the common loads)."""
    if not 0.0 <= shape_miss_rate <= 1.0:
        raise SimError(f"shape_miss_rate={shape_miss_rate} must lie in [0, 1]")
    if dtype not in BYTES:
        raise SimError(f"dtype {dtype!r}; use fp32 or bf16")
    layout.check(model, devices)
    if layout.devices > 1:
        _link(prof)  # a one-device profile cannot run a multi-device layout
    acc = _Acc(prof, dtype, shape_miss_rate)
    b, s, d, tp, pp = layout.micro_batch_size, model.seq_len, model.d_model, layout.tp, layout.pp
    n, p = b * s, BYTES[dtype]
    stage_blocks = model.n_layers // pp * model.loop_repeats
    one = _Acc(prof, dtype, shape_miss_rate)
    block_time(model, layout, prof, dtype, one)
    for kind, t in one.kinds.items():
        acc.add(kind, t * stage_blocks)
    params = local_params(model, layout)
    n_local = sum(params.values())
    if dtype == "bf16":  # autocast: weights cast to bf16 in the forward, weight gradients back to fp32
        mats = params["dense"] + params["experts"] + model.vocab_size * d / tp  # the weights cast
        acc.add("casts", 2 * 6 * mats / prof.elementwise_bw + 2 * _tensors(model, layout) * prof.op_overhead_s)
    # first stage: embedding gather (+ positions); last stage: final norm, head, cross entropy. The slowest stage
    # is the last one when pp > 1 (the head outweighs the gather); with one stage both are on it.
    emb = _Acc(prof, dtype)
    emb.memory("embedding", 2 * n * d * p * (2 if model.learned_positions else 1), ops=3)
    head = _Acc(prof, dtype)
    head.memory("final_norm", 2 * n * d * p, ops=1)
    head.matmul("lm_head", n, d, model.vocab_size / tp, cast_input=True)
    head.memory("cross_entropy", n * model.vocab_size / tp * 4 * 3, ops=4)
    for part in (head, emb) if pp == 1 else (head,):
        for kind, t in part.kinds.items():
            acc.add(kind, t)
    acc.add("autograd", _tensors(model, layout) * prof.op_overhead_s)  # one gradient accumulation per tensor
    comm: dict[str, float] = {"tp": 0.0, "ep": 0.0, "pp": 0.0, "dp": 0.0}
    if tp > 1:
        comm["tp"] = 4 * stage_blocks * allreduce_s(n * d * p, tp, prof)
        comm["tp"] += 2 * allreduce_s(n * d * p, tp, prof)  # vocab-parallel embedding / head
    if layout.ep > 1 and model.moe:
        comm["ep"] = 4 * stage_blocks * alltoall_s(n * model.top_k * d * p, layout.ep, prof)
    if pp > 1:
        comm["pp"] = 2 * p2p_s(n * d * p, prof)
    t_micro = sum(acc.kinds.values()) + comm["tp"] + comm["ep"] + comm["pp"]
    m = layout.micro_batches
    pipeline = (m + pp - 1) * t_micro
    bubble = pipeline * pipeline_bubble_fraction(pp, m)
    expert_local = params["experts"]
    dense_local = n_local - expert_local
    comm["dp"] = allreduce_s(4 * dense_local, layout.dp, prof) + allreduce_s(4 * expert_local,
                                                                             layout.dp // layout.ep, prof)
    dp_exposed = 0.0 if layout.overlap_dp else comm["dp"]
    # AdamW (fused): read param, grad, two moments; write param and moments (28 B/param); gradient clipping reads
    # the gradients for the norm and scales them (12 B/param); a few operators per parameter tensor.
    optimizer = 40 * n_local / prof.mem_bw + 3 * _tensors(model, layout) * prof.op_overhead_s
    time_s = pipeline + dp_exposed + optimizer
    mem = memory_per_device(model, layout, dtype)
    tokens = layout.global_batch * s
    flops = model.training_flops_per_token() * tokens
    mfu = flops / (time_s * layout.devices * prof.peak(dtype))
    breakdown = dict(sorted(acc.kinds.items(), key=lambda kv: -kv[1]))
    return StepCost(time_s=time_s, compute_s=m * sum(acc.kinds.values()), bubble_s=bubble,
                    comm_s={**comm, "dp_exposed": dp_exposed}, optimizer_s=optimizer, memory=mem,
                    fits=mem["total"] <= prof.memory_bytes, tokens_per_step=tokens, tokens_per_s=tokens / time_s,
                    model_flops_per_step=flops, mfu=mfu, breakdown=breakdown)


def _tensors(model: SimModel, layout: Layout) -> int:
    """Parameter tensors on the busiest device (weights and biases of each linear, norm weights/biases)."""
    per_block = 4 + 4 + 4  # qkv, proj (weight + bias), two norms (weight + bias)
    if model.moe:
        per_block += 1 + (model.routed // layout.ep if not model.pool_size else 0) * model.ffn_mats \
            + model.shared_experts * model.ffn_mats
    else:
        per_block += 2 * model.ffn_mats
    pool = model.pool_size // layout.ep * model.ffn_mats if model.pool_size else 0
    return model.n_layers // layout.pp * per_block + pool + 4
