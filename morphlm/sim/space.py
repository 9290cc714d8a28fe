"""What the simulator simulates: a model shape (dense or routed, pooled, looped) and a parallel layout.

:class:`SimModel` is the simulator's own description of a transformer, independent of ModelConfig so that routed
shapes (experts, top-k, expert width, shared experts, a UniPool pool, LoopMoE repeats) can be simulated before
the model code has them; :func:`from_model_config` converts a dense ModelConfig. :class:`Layout` is a
Megatron-style parallel layout; every invalid combination is a :class:`SimError` naming the field and the fix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .hardware import SimError

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "swiglu")


@dataclass(frozen=True)
class SimModel:
    n_layers: int = 4  # unique transformer blocks (each run loop_repeats times)
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int | None = None  # grouped-query attention; None -> n_heads
    d_ff: int | None = None  # dense FFN width (experts == 0); None -> 4·d_model
    experts: int = 0  # routed experts per layer (0 = dense FFN); with pool_size, ignored
    top_k: int = 1  # experts per token
    expert_d_ff: int | None = None  # width of one routed/shared expert; None -> d_ff
    shared_experts: int = 0  # always-on experts per layer (DeepSeekMoE / Qwen2-MoE)
    pool_size: int = 0  # UniPool: one pool of M experts shared by all layers (0 = per-layer experts)
    loop_repeats: int = 1  # LoopMoE: the stack of n_layers blocks runs this many times
    capacity_factor: float | None = None  # None: dropless; else each expert computes cf·k·T/E rows
    seq_len: int = 256
    vocab_size: int = 2048
    activation: str = "gelu"
    tie_embeddings: bool = True
    learned_positions: bool = True
    name: str = "sim"

    def __post_init__(self) -> None:
        for f in ("n_layers", "d_model", "n_heads", "top_k", "loop_repeats", "seq_len", "vocab_size"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise SimError(f"model field {f}={v!r} must be a positive integer")
        for f in ("experts", "shared_experts", "pool_size"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise SimError(f"model field {f}={v!r} must be a non-negative integer")
        for f in ("n_kv_heads", "d_ff", "expert_d_ff"):
            v = getattr(self, f)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise SimError(f"model field {f}={v!r} must be a positive integer or null")
        if self.d_model % self.n_heads:
            raise SimError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; pick n_heads "
                           "among the divisors of d_model")
        if self.n_heads % self.kv_heads:
            raise SimError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.kv_heads}")
        if self.activation not in ACTIVATIONS:
            raise SimError(f"activation={self.activation!r}; use one of {ACTIVATIONS}")
        if self.routed and self.top_k > self.routed:
            raise SimError(f"top_k={self.top_k} is larger than the {self.routed} routed experts; lower top_k or "
                           "add experts")
        if self.capacity_factor is not None and not self.capacity_factor > 0:
            raise SimError(f"capacity_factor={self.capacity_factor} must be positive (or null for dropless)")

    # ------------------------------------------------------------------ derived shape
    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def ffn_width(self) -> int:
        return 4 * self.d_model if self.d_ff is None else self.d_ff

    @property
    def expert_width(self) -> int:
        return self.ffn_width if self.expert_d_ff is None else self.expert_d_ff

    @property
    def routed(self) -> int:
        """Experts a layer's router chooses among (the pool under UniPool); 0 for a dense FFN."""
        return self.pool_size if self.pool_size else self.experts

    @property
    def moe(self) -> bool:
        return self.routed > 0

    @property
    def ffn_mats(self) -> int:
        return 3 if self.activation == "swiglu" else 2

    @property
    def depth(self) -> int:
        """Blocks a token passes through (n_layers · loop_repeats)."""
        return self.n_layers * self.loop_repeats

    # ------------------------------------------------------------------ parameters (matmul weights + embeddings)
    def expert_params(self) -> int:
        return self.ffn_mats * self.d_model * self.expert_width

    def attn_params(self) -> int:
        d = self.d_model
        return d * (d + 2 * self.kv_dim) + d * d

    def dense_ffn_params(self) -> int:
        return self.ffn_mats * self.d_model * self.ffn_width

    def router_params(self) -> int:
        return self.d_model * self.routed if self.moe else 0

    def norm_params(self) -> int:
        return 2 * self.d_model  # two norm weights per block

    def embedding_params(self) -> int:
        pos = self.seq_len * self.d_model if self.learned_positions else 0
        head = 0 if self.tie_embeddings else self.vocab_size * self.d_model
        return self.vocab_size * self.d_model + pos + head + self.d_model  # + final norm

    def layer_params(self) -> int:
        """Per-block parameters that are not routed experts (attention, norms, router, shared experts or the
        dense FFN)."""
        ffn = self.shared_experts * self.expert_params() + self.router_params() if self.moe \
            else self.dense_ffn_params()
        return self.attn_params() + self.norm_params() + ffn

    def routed_expert_count(self) -> int:
        """Routed experts stored in the whole model (the pool once, or E per layer)."""
        if not self.moe:
            return 0
        return self.pool_size if self.pool_size else self.n_layers * self.experts

    def total_params(self) -> int:
        return (self.n_layers * self.layer_params() + self.routed_expert_count() * self.expert_params()
                + self.embedding_params())

    def active_params(self) -> int:
        """Parameters one token's forward touches once (unique blocks, not multiplied by loop_repeats): the N of
        the scaling law."""
        per_layer = self.attn_params() + self.norm_params()
        if self.moe:
            per_layer += self.router_params() + (self.top_k + self.shared_experts) * self.expert_params()
        else:
            per_layer += self.dense_ffn_params()
        return self.n_layers * per_layer + self.embedding_params()

    def matmul_params_per_token(self) -> float:
        """Weights in a matmul per token per forward (looping counts each repeat): the N of 6·N."""
        per_layer = self.attn_params()
        if self.moe:
            per_layer += self.router_params() + (self.top_k + self.shared_experts) * self.expert_params()
        else:
            per_layer += self.dense_ffn_params()
        return self.depth * per_layer + self.vocab_size * self.d_model

    def training_flops_per_token(self) -> float:
        """6·N_matmul + 12·depth·d·T (the toolkit's FLOPs convention: the full T×T square)."""
        return 6.0 * self.matmul_params_per_token() + 12.0 * self.depth * self.d_model * self.seq_len

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "model") -> "SimModel":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SimError(f"{where}: unknown model field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


def from_model_config(cfg: Any, seq_len: int | None = None) -> SimModel:
    """The SimModel of a dense ModelConfig (a routed ModelConfig is refused: describe it as a SimModel)."""
    for f in ("experts", "n_experts", "moe_experts"):
        if getattr(cfg, f, 0):
            raise SimError(f"ModelConfig {cfg.name!r} is routed ({f}={getattr(cfg, f)}); describe it with "
                           "SimModel(experts=..., top_k=...) instead")
    return SimModel(n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads,
                    d_ff=cfg.d_ff, seq_len=seq_len or cfg.max_seq_len, vocab_size=cfg.vocab_size,
                    activation=cfg.activation, tie_embeddings=cfg.tie_embeddings,
                    learned_positions=cfg.position == "learned", name=cfg.name)


@dataclass(frozen=True)
class Layout:
    """A parallel layout (Megatron-LM conventions, Narayanan et al. 2021, arXiv 2104.04473): ``dp·tp·pp``
    devices; expert parallelism is carved out of data parallelism as in Megatron-Core (``ep`` divides ``dp``:
    each expert lives on ``dp/ep`` replicas, the experts of a layer split over ``ep`` ranks); ``micro_batches``
    per step of ``micro_batch_size`` sequences on each data-parallel rank (global batch = dp·m·b)."""

    dp: int = 1
    tp: int = 1
    pp: int = 1
    ep: int = 1
    micro_batches: int = 1
    micro_batch_size: int = 8
    overlap_dp: bool = False  # gradient all-reduce hidden behind the backward pass

    def __post_init__(self) -> None:
        for f in ("dp", "tp", "pp", "ep", "micro_batches", "micro_batch_size"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise SimError(f"layout field {f}={v!r} must be a positive integer")
        if self.dp % self.ep:
            raise SimError(f"ep={self.ep} must divide dp={self.dp} (expert parallelism is carved from data "
                           "parallelism); raise dp or lower ep")

    @property
    def devices(self) -> int:
        return self.dp * self.tp * self.pp

    @property
    def global_batch(self) -> int:
        return self.dp * self.micro_batches * self.micro_batch_size

    def check(self, model: SimModel, devices: int | None = None) -> None:
        """Refuse a layout that cannot run ``model`` (or that does not use exactly ``devices``)."""
        if devices is not None and self.devices != devices:
            raise SimError(f"layout dp·tp·pp = {self.dp}·{self.tp}·{self.pp} = {self.devices} devices, but "
                           f"--devices is {devices}; make the product equal the device count")
        if model.n_heads % self.tp or model.kv_heads % self.tp:
            raise SimError(f"tp={self.tp} must divide n_heads={model.n_heads} and n_kv_heads={model.kv_heads}")
        if model.n_layers % self.pp:
            raise SimError(f"pp={self.pp} must divide n_layers={model.n_layers}")
        if self.pp > 1 and model.loop_repeats > 1:
            raise SimError("pipeline stages over a looped stack (loop_repeats > 1) are not modelled; use pp=1")
        if self.ep > 1 and not model.moe:
            raise SimError(f"ep={self.ep} needs routed experts; the model is dense (experts=0): use ep=1")
        if model.moe and model.routed % self.ep:
            raise SimError(f"ep={self.ep} does not divide the {model.routed} routed experts; pick ep among the "
                           "divisors of the expert count")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        return (f"dp{self.dp}-tp{self.tp}-pp{self.pp}-ep{self.ep}-m{self.micro_batches}"
                f"x{self.micro_batch_size}")


_LAYOUT_KEYS = {"dp": "dp", "tp": "tp", "pp": "pp", "ep": "ep", "m": "micro_batches", "mb": "micro_batches",
                "micro_batches": "micro_batches", "b": "micro_batch_size", "mbs": "micro_batch_size",
                "micro_batch_size": "micro_batch_size", "overlap": "overlap_dp"}


def parse_layout(text: str) -> Layout:
    """``"dp=2,tp=1,pp=1,ep=2,m=4,b=8"`` → Layout (missing keys take their defaults)."""
    kwargs: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if not eq or key not in _LAYOUT_KEYS:
            raise SimError(f"layout {text!r}: {part!r} is not key=value with a key among "
                           f"{sorted(set(_LAYOUT_KEYS))} (e.g. dp=2,tp=1,pp=1,ep=1,m=4,b=8)")
        field = _LAYOUT_KEYS[key]
        if field == "overlap_dp":
            kwargs[field] = value.strip().lower() in ("1", "true", "yes", "on")
            continue
        try:
            kwargs[field] = int(value)
        except ValueError:
            raise SimError(f"layout {text!r}: {key}={value!r} is not an integer") from None
    return Layout(**kwargs)


def enumerate_layouts(devices: int, *, global_batch: int, micro_batch_size: int = 1, max_tp: int = 8,
                      eps: tuple[int, ...] | None = None) -> list[Layout]:
    """Every dp·tp·pp = devices factorisation (tp ≤ max_tp) with each ep dividing dp (or among ``eps``), at a fixed
    global batch: micro_batches = global_batch / (dp · micro_batch_size) (factorisations it does not divide are
    skipped)."""
    out = []
    for tp in range(1, min(devices, max_tp) + 1):
        if devices % tp:
            continue
        for pp in range(1, devices // tp + 1):
            if (devices // tp) % pp:
                continue
            dp = devices // (tp * pp)
            if global_batch % (dp * micro_batch_size):
                continue
            m = global_batch // (dp * micro_batch_size)
            for ep in (e for e in range(1, dp + 1) if dp % e == 0 and (eps is None or e in eps)):
                out.append(Layout(dp=dp, tp=tp, pp=pp, ep=ep, micro_batches=m, micro_batch_size=micro_batch_size))
    return out
