"""TernaryBERT (Zhang et al., EMNLP 2020, arXiv 2009.12812): ternary weights, 8-bit activations and
distillation-aware quantization-aware training (QAT) over the native model.

Weights (TernaryBERT §3.1, eq. 3-4). For a tensor ``w`` with ``n`` entries (or one row of it):

* TWN:  Δ = 0.7·‖w‖₁/n;  b_i = sign(w_i)·1[|w_i| > Δ];  α = Σ_{|w_i|>Δ} |w_i| / #{|w_i| > Δ};  ŵ = α·b.
* LAT (loss-aware ternarization, Hou & Kwok 2018): minimise ‖ŵ − w‖²_D with D = diag(d), d = √v̂ + ε
  and v̂ Adam's bias-corrected second moment of w. Alternating minimisation:
  α ← ‖b⊙d⊙w‖₁ / ‖b⊙d‖₁ and b ← sign(w)·1[|w| > α/2], started from TWN's b. *Reconstruction*: the
  released TernaryBERT code has no LAT, so the number of alternations (``lat_iters``, stopping early
  when b no longer changes), the TWN start and the use of AdamW's bias-corrected ``exp_avg_sq`` read
  at the start of every step (before any step, or outside :func:`fit`, d = 1, i.e. the exact
  least-squares ternary fit) are our choices.

Granularity: every Transformer linear (fused qkv, attention output, fc1, fc2, pooler, MLM transform) is
ternarized layer-wise (one α, one Δ); the word embedding row-wise (α, Δ per token row); an untied LM
head (vocab × d, the word embedding's transpose role) row-wise too. Position/segment embeddings,
norms, biases and the classifier stay full precision.

Backward: clipped straight-through estimator, ∂L/∂w = ∂L/∂ŵ · 1[|w| < 2.5]; the full-precision latent
weights are what the optimizer updates and what a QAT checkpoint stores (under the usual names, so
:func:`fit` saves and resumes it like any model).

Activations: 8-bit symmetric per-tensor dynamic (min-max) quantization on the input of every ternary
linear: clamp to ±2.5, s = 127 / max|x|, x̂ = round(x·s)/s, with the STE passing gradients inside the
clamp range. The paper also quantizes Q, K, V and the attention probabilities inside attention; the
model code owns those tensors, so here Q, K and V are fake-quantized as the three output slices of the
fused qkv projection (``quantize_qkv_output``), and the attention probabilities stay full precision
(a declared deviation). A tied LM head multiplies by the ternary embedding (the model reads
``tok_emb.weight``, which these modules expose as the fake-quantized table), but its input is not
activation-quantized for the same reason.

The swap is done by :func:`ternarize_` (in place) or :func:`ternarize` (on a copy); distillation-aware
training is :func:`qat_distill`, which hands the TinyBERT/TernaryBERT distillation loss of
:mod:`morphlm.compress.distill` to the one training loop :func:`morphlm.train.loop.fit`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CompressionError, StrictConfig

log = logging.getLogger("morphlm.compress.ternary")

WEIGHT_METHODS = ("twn", "lat")
EMBEDDING_MODES = ("row", "layer", "fp")
TWN_FACTOR = 0.7


# ---------------------------------------------------------------------------- configuration
@dataclass
class TernaryConfig(StrictConfig):
    """How to ternarize a model (defaults: TernaryBERT's W2A8 with row-wise word embeddings)."""

    weights: str = "twn"  # twn | lat
    embedding: str = "row"  # row | layer | fp (keep the word embedding in full precision)
    act_bits: int | None = 8  # None or 0: no activation quantization
    act_clip: float | None = 2.5  # clamp activations to ±act_clip before the min-max scale; None: no clamp
    weight_clip: float = 2.5  # clipped STE: gradients flow where |w| < weight_clip
    quantize_qkv_output: bool = True  # fake-quantize Q, K and V (the fused qkv's output slices)
    lat_iters: int = 10  # LAT: maximum alternations of (α, b)
    lat_eps: float = 1e-8  # LAT: d = sqrt(v̂) + eps

    def __post_init__(self) -> None:
        if self.act_bits == 0:
            self.act_bits = None
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise CompressionError(f"invalid TernaryConfig: {msg}")

        need(self.weights in WEIGHT_METHODS, f"weights={self.weights!r}; choose one of {WEIGHT_METHODS}")
        need(self.embedding in EMBEDDING_MODES, f"embedding={self.embedding!r}; choose one of {EMBEDDING_MODES}")
        need(self.act_bits is None or (isinstance(self.act_bits, int) and 2 <= self.act_bits <= 8),
             f"act_bits={self.act_bits!r} must be an integer in 2..8 (or 0/None for full-precision activations)")
        need(self.act_clip is None or self.act_clip > 0, f"act_clip={self.act_clip} must be > 0 (or None)")
        need(self.weight_clip > 0, f"weight_clip={self.weight_clip} must be > 0")
        need(isinstance(self.lat_iters, int) and self.lat_iters >= 1, f"lat_iters={self.lat_iters} must be >= 1")
        need(self.lat_eps > 0, f"lat_eps={self.lat_eps} must be > 0")


# ---------------------------------------------------------------------------- ternary weights
def _rows(w: torch.Tensor, rowwise: bool) -> torch.Tensor:
    """View ``w`` as (groups, n): one group per row (row-wise) or one group for the whole tensor."""
    return w.reshape(w.shape[0], -1) if rowwise else w.reshape(1, -1)


@torch.no_grad()
def twn_ternarize(w: torch.Tensor, rowwise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """TWN: (codes, alpha). codes is int8 in {-1, 0, +1} with ``w``'s shape; alpha is float32 of shape
    (rows, 1) when ``rowwise`` else (1,). A group whose entries are all zero gets alpha = 0."""
    x = _rows(w.detach().float(), rowwise)  # (G, n)
    delta = TWN_FACTOR * x.abs().mean(dim=1, keepdim=True)  # (G, 1)
    keep = x.abs() > delta
    count = keep.sum(dim=1, keepdim=True)
    alpha = (x.abs() * keep).sum(dim=1, keepdim=True) / count.clamp(min=1)  # (G, 1)
    codes = (torch.sign(x) * keep).to(torch.int8).reshape(w.shape)
    return codes, (alpha if rowwise else alpha.reshape(1))


@torch.no_grad()
def lat_ternarize(w: torch.Tensor, d: torch.Tensor | None = None, rowwise: bool = False,
                  iters: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss-aware ternarization: argmin over α ≥ 0, b ∈ {-1,0,1}ⁿ of Σ d_i (α b_i − w_i)² by alternating
    α = ‖b⊙d⊙w‖₁/‖b⊙d‖₁ and b = sign(w)·1[|w| > α/2] from TWN's b (see the module docstring). ``d``
    (same shape as w, positive) defaults to ones. Returns (codes, alpha) like :func:`twn_ternarize`."""
    x = _rows(w.detach().float(), rowwise)
    dd = torch.ones_like(x) if d is None else _rows(d.detach().float(), rowwise)
    if dd.shape != x.shape:
        raise CompressionError(f"LAT: the diagonal d has shape {tuple(d.shape)} but the weight has {tuple(w.shape)}")
    if not bool((dd > 0).all()):
        raise CompressionError("LAT: the diagonal d must be positive (d = sqrt(v) + eps)")
    codes, _ = twn_ternarize(w, rowwise)
    b = _rows(codes, rowwise).float()
    ax = x.abs()
    alpha = torch.zeros(x.shape[0], 1, device=x.device)
    for _ in range(iters):
        nz = b != 0
        alpha = (dd * ax * nz).sum(1, keepdim=True) / (dd * nz).sum(1, keepdim=True).clamp(min=1e-30)
        new_b = torch.sign(x) * (ax > alpha / 2)
        if torch.equal(new_b, b):
            break
        b = new_b
    else:
        nz = b != 0
        alpha = (dd * ax * nz).sum(1, keepdim=True) / (dd * nz).sum(1, keepdim=True).clamp(min=1e-30)
    alpha = torch.where((b != 0).any(1, keepdim=True), alpha, torch.zeros_like(alpha))
    out = b.to(torch.int8).reshape(w.shape)
    return out, (alpha if rowwise else alpha.reshape(1))


def dequantize(codes: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """α·b as float32 (alpha of shape (1,) or (rows, 1))."""
    a = alpha.float()
    if a.numel() > 1:
        a = a.reshape(-1, *([1] * (codes.dim() - 1)))
    return codes.float() * a


class _ClippedSTE(torch.autograd.Function):
    """Forward: a precomputed quantized tensor. Backward: the gradient passes to the latent tensor where
    ``lo < x < hi`` and is zero elsewhere (the clipped straight-through estimator)."""

    @staticmethod
    def forward(ctx, x, quantized, lo, hi):
        ctx.save_for_backward(x)
        ctx.bounds = (lo, hi)
        return quantized

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        lo, hi = ctx.bounds
        inside = (x > lo) & (x < hi)
        return grad * inside.to(grad.dtype), None, None, None


def clipped_ste(x: torch.Tensor, quantized: torch.Tensor, clip: float | None) -> torch.Tensor:
    """Return ``quantized`` in the forward pass, with d out/d x = 1[|x| < clip] (no clip: identity)."""
    bound = float("inf") if clip is None else float(clip)
    return _ClippedSTE.apply(x, quantized.to(x.dtype), -bound, bound)


# ---------------------------------------------------------------------------- activations
@torch.no_grad()
def activation_qparams(x: torch.Tensor, bits: int = 8, clip: float | None = 2.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-tensor min-max quantization: (integer codes as float, scale s) with
    x̂ = codes / s, codes ∈ [-(2^(bits-1)-1), 2^(bits-1)-1], s = (2^(bits-1)-1) / max|clamp(x)|
    (|clamp(x)·s| ≤ 2^(bits-1)-1 by construction, so no second clamp is needed)."""
    xc = x.float() if clip is None else x.float().clamp(-clip, clip)
    levels = 2 ** (bits - 1) - 1
    lo, hi = torch.aminmax(xc)  # one pass instead of abs() + amax()
    m = torch.maximum(-lo, hi)
    s = torch.where(m > 0, levels / m, torch.ones_like(m))
    q = xc * s if clip is None else xc.mul_(s)  # clamp() made a fresh tensor: scale it in place
    return q.round_(), s


def quantize_activation(x: torch.Tensor, bits: int | None = 8, clip: float | None = 2.5) -> torch.Tensor:
    """Fake-quantize an activation tensor (STE inside the clamp range); bits None: identity."""
    if bits is None:
        return x
    q, s = activation_qparams(x, bits, clip)
    return clipped_ste(x, q.div_(s), clip)


# ---------------------------------------------------------------------------- fake-quant modules
class _TernaryBase(nn.Module):
    """Holds the full-precision latent weight as the parameter ``weight`` (so state dicts keep the float
    model's names) and ternarizes it on use; reading the attribute ``.weight`` gives the ternary weight,
    ``.latent_weight`` the parameter. ``second_moment``: Adam's v̂ of the latent weight, set by
    :class:`LATSecondMoment` (LAT only; not saved)."""

    granularity: str = "layer"

    def _setup(self, cfg: TernaryConfig, granularity: str) -> None:
        if granularity not in ("layer", "row"):
            raise CompressionError(f"granularity={granularity!r}; use 'layer' or 'row'")
        self.cfg = cfg
        self.granularity = granularity
        self.second_moment: torch.Tensor | None = None

    @property
    def weight(self) -> torch.Tensor:
        """The effective (fake-quantized, α·b) weight, with the clipped-STE gradient to the latent weight:
        model code that reads ``.weight`` directly (a tied or untied LM head) sees the ternary weights."""
        if "weight" not in self._parameters:
            raise AttributeError("weight")  # during construction, before the latent weight is registered
        return self.quantized_weight()

    @property
    def latent_weight(self) -> nn.Parameter:
        """The trainable full-precision weight (stored as ``weight`` in state dicts)."""
        return self._parameters["weight"]

    def ternary(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes int8, alpha float32) of the current latent weight."""
        return self._ternary_of(self.latent_weight, self.second_moment)

    def _ternary_of(self, w: torch.Tensor, second_moment: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        rowwise = self.granularity == "row"
        if self.cfg.weights == "lat":
            d = None
            if second_moment is not None and second_moment.shape == w.shape:
                d = second_moment.detach().float().sqrt() + self.cfg.lat_eps
            return lat_ternarize(w, d, rowwise, self.cfg.lat_iters)
        return twn_ternarize(w, rowwise)

    def quantized_weight(self) -> torch.Tensor:
        """α·b in the forward pass, clipped-STE gradient to the latent weight in the backward pass."""
        w = self.latent_weight
        codes, alpha = self.ternary()
        return clipped_ste(w, dequantize(codes, alpha).to(w.device), self.cfg.weight_clip)


class TernaryLinear(_TernaryBase):
    """Fake-quant ternary linear: y = Q_w(W) · Q_a(x) + b, with optional per-slice fake quantization of
    the output (``out_splits``: the q, k, v slices of a fused projection)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, cfg: TernaryConfig,
                 granularity: str = "layer", out_splits: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_parameter("weight", nn.Parameter(torch.empty(out_features, in_features)))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.out_splits = tuple(out_splits) if out_splits else None
        self._setup(cfg, granularity)

    @classmethod
    def from_linear(cls, lin: nn.Linear, cfg: TernaryConfig, granularity: str = "layer",
                    out_splits: tuple[int, ...] | None = None) -> "TernaryLinear":
        m = cls(lin.in_features, lin.out_features, lin.bias is not None, cfg, granularity, out_splits)
        with torch.no_grad():
            m.latent_weight.copy_(lin.weight)
            if lin.bias is not None:
                m.bias.copy_(lin.bias)
        return m.to(lin.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = quantize_activation(x, self.cfg.act_bits, self.cfg.act_clip)
        y = F.linear(x, self.quantized_weight(), self.bias)
        if self.out_splits is not None and self.cfg.act_bits is not None:
            y = torch.cat([quantize_activation(part, self.cfg.act_bits, self.cfg.act_clip)
                           for part in y.split(self.out_splits, dim=-1)], dim=-1)
        return y

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, {self.cfg.weights}, {self.granularity}-wise, "
                f"act_bits={self.cfg.act_bits}")


class TernaryEmbedding(_TernaryBase):
    """Fake-quant ternary embedding (a tied LM head that multiplies by ``tok_emb.weight`` uses the
    ternary table, see :attr:`_TernaryBase.weight`)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, cfg: TernaryConfig, granularity: str = "row") -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_parameter("weight", nn.Parameter(torch.empty(num_embeddings, embedding_dim)))
        self._setup(cfg, granularity)

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, cfg: TernaryConfig, granularity: str = "row") -> "TernaryEmbedding":
        m = cls(emb.num_embeddings, emb.embedding_dim, cfg, granularity)
        with torch.no_grad():
            m.latent_weight.copy_(emb.weight)
        return m.to(emb.weight.device)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.granularity != "row":
            return F.embedding(ids, self.quantized_weight())
        # row-wise scales depend on their own row only: ternarize just the rows looked up (a batch touches
        # a few hundred of ~30k rows), with the same result as ternarizing the whole table first
        rows = F.embedding(ids, self.latent_weight)  # (..., D), differentiable gather
        flat = rows.reshape(-1, self.embedding_dim)
        sm = None if self.second_moment is None else F.embedding(ids, self.second_moment).reshape(flat.shape)
        codes, alpha = self._ternary_of(flat, sm)
        return clipped_ste(rows, dequantize(codes, alpha).reshape(rows.shape).to(rows.device), self.cfg.weight_clip)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.cfg.weights}, {self.granularity}-wise"


# ---------------------------------------------------------------------------- the swap
def ternary_targets(model: nn.Module, cfg: TernaryConfig) -> list[tuple[str, str, str, tuple[int, ...] | None]]:
    """(module name, kind 'linear'|'embedding', granularity, out_splits) of every module to ternarize."""
    if not hasattr(model, "blocks") or not hasattr(model, "config"):
        raise CompressionError(f"ternarize expects a morphlm TransformerLM (got {type(model).__name__}); load one "
                               f"with morphlm.train.checkpoint.load_model")
    mcfg = model.config
    out: list[tuple[str, str, str, tuple[int, ...] | None]] = []
    for i, block in enumerate(model.blocks):
        attn = block.attn
        splits = (attn.q_dim, attn.kv_dim, attn.kv_dim) if cfg.quantize_qkv_output else None
        out.append((f"blocks.{i}.attn.qkv", "linear", "layer", splits))
        out.append((f"blocks.{i}.attn.proj", "linear", "layer", None))
        out.append((f"blocks.{i}.mlp.fc1", "linear", "layer", None))
        out.append((f"blocks.{i}.mlp.fc2", "linear", "layer", None))
    if mcfg.head == "cls":
        out.append(("pooler", "linear", "layer", None))
    if mcfg.head == "mlm":
        out.append(("mlm_dense", "linear", "layer", None))
    if getattr(model, "lm_head", None) is not None:
        out.append(("lm_head", "linear", "row", None))
    if cfg.embedding != "fp":
        out.append(("tok_emb", "embedding", cfg.embedding, None))
    return out


def ternarize_(model: nn.Module, config: TernaryConfig | None = None) -> nn.Module:
    """Swap the model's linears and word embedding for fake-quant ternary modules, in place."""
    cfg = config or TernaryConfig()
    if any(isinstance(m, _TernaryBase) for m in model.modules()):
        raise CompressionError("the model is already ternarized; ternarize the full-precision model instead")
    for name, kind, gran, splits in ternary_targets(model, cfg):
        old = model.get_submodule(name)
        if kind == "linear":
            if not isinstance(old, nn.Linear):
                raise CompressionError(f"{name} is a {type(old).__name__}, not nn.Linear; ternarize a float model")
            new = TernaryLinear.from_linear(old, cfg, gran, splits)
        else:
            if not isinstance(old, nn.Embedding):
                raise CompressionError(f"{name} is a {type(old).__name__}, not nn.Embedding; ternarize a float model")
            new = TernaryEmbedding.from_embedding(old, cfg, gran)
        new.train(old.training)
        model.set_submodule(name, new)
    model.ternary_config = cfg
    return model


def ternarize(model: nn.Module, method: str | None = None, *, config: TernaryConfig | None = None,
              inplace: bool = False, **overrides: Any) -> nn.Module:
    """A fake-quant, trainable ternary copy of ``model`` (``method``: twn | lat, default twn or the
    config's; other TernaryConfig fields as keywords, e.g. ``act_bits=None``, ``embedding='layer'``)."""
    if method is not None:
        overrides["weights"] = method
    config = dataclasses.replace(config, **overrides) if config is not None else TernaryConfig(**overrides)
    target = model if inplace else copy.deepcopy(model)
    return ternarize_(target, config)


def ternary_modules(model: nn.Module) -> Iterator[tuple[str, _TernaryBase]]:
    for name, m in model.named_modules():
        if isinstance(m, _TernaryBase):
            yield name, m


def is_ternarized(model: nn.Module) -> bool:
    return any(True for _ in ternary_modules(model))


# ---------------------------------------------------------------------------- LAT's diagonal
class LATSecondMoment:
    """fit() callback: before every step, hand each LAT module Adam's bias-corrected second moment
    v̂ = exp_avg_sq / (1 − β₂^t) of its latent weight (the diagonal D of LAT's weighted fit)."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = [m for _, m in ternary_modules(model) if m.cfg.weights == "lat"]

    def on_step_begin(self, state) -> None:
        opt = state.optimizer
        if opt is None:
            return
        beta2 = {}
        for group in opt.param_groups:
            for p in group["params"]:
                beta2[id(p)] = group["betas"][1]
        for m in self.modules:
            p = m.latent_weight
            st = opt.state.get(p, {})
            if "exp_avg_sq" not in st or id(p) not in beta2:
                continue
            t = float(st["step"])
            m.second_moment = st["exp_avg_sq"].detach() / (1.0 - beta2[id(p)] ** t)


# ---------------------------------------------------------------------------- distillation-aware training
def qat_distill(teacher: nn.Module, student: nn.Module, data, args, distill_config=None, *,
                callbacks=(), tokenizer_json: str | None = None, lineage: dict[str, Any] | None = None,
                extra_state: dict[str, Any] | None = None):
    """Distillation-aware QAT (TernaryBERT): train the ternarized ``student`` (latent weights) against the
    full-precision ``teacher`` with the TinyBERT losses of :mod:`morphlm.compress.distill` — every hidden
    state and every layer's pre-softmax attention 1:1 (MSE) plus soft cross-entropy on the logits —
    through the one loop ``fit`` (via ``distill``). Returns fit's FitResult.

    ``distill_config``: a ``DistillConfig``; by default :func:`ternary_distill_config` for the two models."""
    from .distill import distill

    if not is_ternarized(student):
        raise CompressionError("qat_distill trains a ternarized student: call ternarize(model) first")
    cfg = distill_config if distill_config is not None else ternary_distill_config(teacher, student)
    cbs = list(callbacks)
    if any(m.cfg.weights == "lat" for _, m in ternary_modules(student)):
        cbs.append(LATSecondMoment(student))
    return distill(teacher, student, data, args, cfg, callbacks=cbs, tokenizer_json=tokenizer_json,
                   lineage=lineage, extra_state=extra_state)


def ternary_distill_config(teacher: nn.Module, student: nn.Module, temperature: float = 1.0):
    """TernaryBERT's distillation setting (quant_task_glue.py): same-shape teacher and student, every layer
    matched 1:1 — embedding output (emb), each block's hidden state (hid) and pre-softmax attention (att),
    MSE without projections (the paper's forms, ``att_loss="mse"``, ``hid_loss="mse"``: teacher and student
    start equal, so there is no scale gap to bridge) — plus soft cross-entropy on the logits (pred), all with
    weight 1 (``DistillConfig(stage="full")``; reduction and temperature conventions are distill.py's)."""
    from .distill import DistillConfig

    t, s = teacher.config, student.config
    if (t.n_layers, t.d_model) != (s.n_layers, s.d_model):
        raise CompressionError(f"TernaryBERT distils a student of the teacher's own shape, but the teacher has "
                               f"{t.n_layers} layers × {t.d_model} and the student {s.n_layers} × {s.d_model}; "
                               f"ternarize a copy of the teacher")
    return DistillConfig(stage="full", layer_map=list(range(s.n_layers)), projection="none",
                         temperature=temperature, att_loss="mse", hid_loss="mse")
