"""Learned growth operators: LiGO (Wang et al., ICLR 2023), and the machinery Mango (``mango.py``) shares.

A learned operator makes every target weight a differentiable function of the *frozen* source weights and
a few operator parameters, fitted ~100 steps on the target's own loss through the one training loop: a
grower (:class:`LiGOGrower`, :class:`~morphlm.grow.mango.MangoGrower`) is an ``nn.Module`` whose only
parameters are the operator and whose forward materialises the target weights and runs a target-shaped
``TransformerLM`` on them (``torch.func.functional_call``), so ``fit(grower, loss_fn, data, args)`` trains
the operator; ``materialise()`` then returns a plain ``TransformerLM``.

LiGO as implemented (Wang et al., ICLR 2023, arXiv 2303.00980, §3; torch's (out, in) convention).
Width: ``W' = B W Aᵀ`` with maps shared across layers (``share_width=False``: one per source layer, LiGO's ``B_l``): the residual stream
``B_emb ∈ R^{D_t×D_s}`` (one map, as the residual connections require); attention per head at fixed
head_dim, ``B_Q = H_Q ⊗ I_dh``, ``B_K = H_K ⊗ I_dh``, ``B_V = H_V ⊗ I_dh`` (RoPE rotates inside a head, so
nothing mixes within one); FFN neurons ``B_F ∈ R^{F_t×F_s}``, the same for SwiGLU's gate and up rows.
Tying (LiGO): a matrix's in-map is the out-map of the space it reads, ``A_QKV = A_fc1 = A_head = Ã_emb``,
``A_O = Ã_V`` (MHA; with GQA the attention output is indexed by query heads, so ``A_O = Ã_Q``),
``A_fc2 = Ã_F``, where ``Ã_X = B_X·diag(n_X)`` and ``n_X`` is fixed: the inverse copy counts of the initial
duplication (``n_s/n_t`` for the random init). This normalisation is a reconstruction: with the bare tie
``A = B`` a duplication init doubles every pre-activation; with it the duplication init is exactly
bert2BERT's FPI, and A stays linear in B. Embeddings grow on their out-dimension (``E' = E B_embᵀ``), biases
and norm vectors as ``b' = B b`` — except the norm feeding a *tied* decoder (final_norm, or mlm_norm), which
writes the decoder's in-dimension and grows as ``Ã_emb g`` (as width.py's FPI divides it); ``mlm_bias``
and the classifier bias are copied. Depth: ``W'_{l'} = Σ_l w^m_{l',l} W̃_l`` with separate coefficients
per module m ∈ {q, k, v, o, fc1, fc2, norm1, norm2, (norm1_out, norm2_out)} (a bias shares its weight's);
width first, then depth (``M = L_depth · R_width``).

Initialisations. ``stack``: depth one-hot ``[l = l' mod L_s]`` (StackBERT), width the cyclic duplication
``g(i') = i' mod n_s`` (identity where nothing grows) — exactly StackBERT when only depth grows, and the
source function (to float rounding) when only widths grow with d_model by an integer factor (tested on
GPT, LLaMA/GQA, BERT). ``noisy`` (default): LiGO's "stackbert_noisy", depth rows one-hot + U(0, noise)
renormalised to sum 1, plus N(0, noise²/n_s) on every width map — without noise duplicated units get
identical gradients and stay copies forever. ``random``: width N(0, 1/n_s) (``AᵀB ≈ I`` in expectation),
depth rows U(0, 1) normalised. Heads keep the kv grouping: target kv head k' copies source kv head
``k' mod Hkv_s`` and the query heads of group k' cycle through that source group's query heads.

Cost: fitting runs the target model, i.e. the target's training FLOPs per token (train/flops.py) × tokens,
plus the operator's matmuls (counted once by torch's FlopCounterMode, ×3 for backward; a few percent).
Both are in ``info["flops"]`` for the lineage; the source's own pretraining is not (LiGO's convention).
"""

from __future__ import annotations

import inspect

import abc

import logging
import math
from dataclasses import asdict
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ..model.attention import rope_tables
from ..model.config import ModelConfig
from ..model.transformer import TransformerLM
from ..train import flops as flops_mod
from ..train.loop import TrainArgs, evaluate, fit, model_loss, resolve_device
from .api import GrowOutput, register_method
from ..surgery import stack_layers
from .errors import GrowthError
from .width import check_growable

log = logging.getLogger("morphlm.grow")

INITS = ("stack", "noisy", "random")
# non-block parameters: how each grows with the residual expansion B (out) and its tied in-map A
_BOUNDARY = {
    "tok_emb.weight": "emb", "pos_emb.weight": "emb", "seg_emb.weight": "emb",
    "emb_norm.weight": "vec", "emb_norm.bias": "vec", "final_norm.weight": "vec", "final_norm.bias": "vec",
    "lm_head.weight": "in", "mlm_dense.weight": "sq", "mlm_dense.bias": "vec", "mlm_norm.weight": "vec",
    "mlm_norm.bias": "vec", "mlm_bias": "copy", "pooler.weight": "sq", "pooler.bias": "vec",
    "classifier.weight": "in", "classifier.bias": "copy",
}


# ---------------------------------------------------------------------------- target checks and maps
def check_growth_target(src: ModelConfig, tgt: ModelConfig) -> None:
    """Raise GrowthError (a ValueError) unless ``tgt`` is a grown ``src``: the checks every growth method shares
    (same architecture and vocabulary, nothing smaller, fixed head_dim, a keepable kv grouping), plus a fixed
    max_seq_len for learned positions (their rows are not grown here)."""
    check_growable(src, tgt)
    if src.position == "learned" and src.max_seq_len != tgt.max_seq_len:
        raise GrowthError(f"learned growth keeps learned position tables as they are: max_seq_len must stay "
                          f"{src.max_seq_len} (got {tgt.max_seq_len}); grow the context separately or use rope")


def cyclic_map(n_t: int, n_s: int) -> list[int]:
    """g(i') = i' mod n_s: the identity on the first n_s indices, then copies (StackBERT / duplication)."""
    return [i % n_s for i in range(n_t)]


def selection(g: list[int], n_s: int) -> torch.Tensor:
    """0/1 matrix (n_t, n_s) with P[i', g(i')] = 1."""
    p = torch.zeros(len(g), n_s)
    p[torch.arange(len(g)), torch.tensor(g)] = 1.0
    return p


def inverse_counts(p: torch.Tensor, init: str) -> torch.Tensor:
    """Fixed in-dimension normalisation n_X (see module docstring): 1/copies, or n_s/n_t for random init."""
    n_t, n_s = p.shape
    if init == "random":
        return torch.full((n_s,), n_s / n_t)
    return 1.0 / p.sum(0).clamp(min=1.0)


def head_maps(src: ModelConfig, tgt: ModelConfig) -> tuple[list[int], list[int]]:
    """(g_q, g_kv): source query head of each target query head, source kv head of each target kv head.

    Target query head h' = k'·rep_t + r' belongs to kv group k'; it copies a query head of source group
    g_kv(k'), so the grouping stays consistent for any rep_s, rep_t."""
    rep_s, rep_t = src.n_heads // src.n_kv_heads, tgt.n_heads // tgt.n_kv_heads
    g_kv = cyclic_map(tgt.n_kv_heads, src.n_kv_heads)
    g_q = [g_kv[k] * rep_s + ((k // src.n_kv_heads) * rep_t + r) % rep_s
           for k in range(tgt.n_kv_heads) for r in range(rep_t)]
    return g_q, g_kv


def depth_stack(l_t: int, l_s: int) -> torch.Tensor:
    """StackBERT: target layer l' is source layer l' mod L_s, as a (L_t, L_s) one-hot matrix."""
    return selection(stack_layers(l_s, l_t), l_s)


def init_width(p: torch.Tensor, init: str, noise: float, gen: torch.Generator) -> torch.Tensor:
    n_s = p.shape[-1]
    if init == "random":
        return torch.randn(p.shape, generator=gen) / math.sqrt(n_s)
    if init == "noisy":
        return p + torch.randn(p.shape, generator=gen) * (noise / math.sqrt(n_s))
    return p.clone()


def init_depth(l_t: int, l_s: int, init: str, noise: float, gen: torch.Generator) -> torch.Tensor:
    w = depth_stack(l_t, l_s)
    if init == "stack":
        return w
    w = w + torch.rand(w.shape, generator=gen) * noise if init == "noisy" else torch.rand(w.shape, generator=gen)
    return w / w.sum(-1, keepdim=True)


def norm_names(cfg: ModelConfig) -> list[str]:
    extra = ["norm1_out", "norm2_out"] if cfg.norm_placement in ("sandwich", "dssn") else []
    return ["norm1", "norm2", *extra]


def norm_has_bias(cfg: ModelConfig) -> bool:
    return cfg.norm == "layernorm" and cfg.bias


def source_layers(model: TransformerLM) -> dict[str, torch.Tensor]:
    """The source blocks' weights stacked over layers (float32 copies), by role.

    Matrices: q (L, Hq·dh, D), k/v (L, kv, D), o (L, D, D), fc1 (L, P·F, D) with P=2 for SwiGLU, fc2
    (L, D, F); vectors ``<role>.bias`` and ``<norm>.weight|bias`` (L, n)."""
    cfg = model.config
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}

    def stack(name: str) -> torch.Tensor:
        return torch.stack([sd[f"blocks.{i}.{name}"] for i in range(cfg.n_layers)])

    qd, kv = cfg.d_model, cfg.kv_dim
    out = dict(zip("qkv", stack("attn.qkv.weight").split((qd, kv, kv), dim=1)))
    out.update(o=stack("attn.proj.weight"), fc1=stack("mlp.fc1.weight"), fc2=stack("mlp.fc2.weight"))
    if cfg.bias:
        out.update(zip(("q.bias", "k.bias", "v.bias"), stack("attn.qkv.bias").split((qd, kv, kv), dim=1)))
        out.update({"o.bias": stack("attn.proj.bias"), "fc1.bias": stack("mlp.fc1.bias"),
                    "fc2.bias": stack("mlp.fc2.bias")})
    for n in norm_names(cfg):
        out[f"{n}.weight"] = stack(f"{n}.weight")
        if norm_has_bias(cfg):
            out[f"{n}.bias"] = stack(f"{n}.bias")
    return {k: v.contiguous().clone() for k, v in out.items()}


# ---------------------------------------------------------------------------- the shared wrapper
class GrowerBase(nn.Module, abc.ABC):
    """An operator over frozen source weights whose forward is the grown target model's forward.

    Subclasses define ``grown_layers()`` (target block tensors by role, stacked over target layers) and
    ``boundary_maps()`` -> (B, A): the residual out-map and its tied in-map, both (D_t, D_s). Only the
    operator is an ``nn.Parameter``; the source lives in non-persistent buffers (moved with ``.to()``,
    never trained, not in ``state_dict``); the target-shaped shell model lives on the meta device."""

    def __init__(self, src_model: TransformerLM, target_cfg: ModelConfig) -> None:
        super().__init__()
        check_growth_target(src_model.config, target_cfg)
        self.config = target_cfg  # fit() reads .config for the FLOPs ruler: the target's
        self.source_config = src_model.config
        self._src: dict[str, str] = {}
        for key, value in source_layers(src_model).items():
            self._keep(f"layer.{key}", value)
        self._boundary = [n for n, _ in src_model.named_parameters() if not n.startswith("blocks.")]
        unknown = [n for n in self._boundary if n not in _BOUNDARY]
        if unknown:
            raise ValueError(f"learned growth does not know how to grow parameter(s) {unknown}")
        params = dict(src_model.named_parameters())
        for name in self._boundary:
            self._keep(f"edge.{name}", params[name].detach().float().clone())
        with torch.device("meta"):
            shell = TransformerLM(target_cfg)
        object.__setattr__(self, "_shell", shell)  # not a submodule: no parameters, no state_dict entries
        self._shell_buffers: list[str] = []
        if target_cfg.position == "rope":
            cos, sin = rope_tables(target_cfg)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
            self._shell_buffers = ["rope_cos", "rope_sin"]

    def _keep(self, key: str, value: torch.Tensor) -> None:
        name = "src__" + key.replace(".", "__")
        self.register_buffer(name, value, persistent=False)
        self._src[key] = name

    def src(self, key: str) -> torch.Tensor:
        return getattr(self, self._src[key])

    def train(self, mode: bool = True):
        super().train(mode)
        self._shell.train(mode)
        return self

    # what each operator defines (LiGOGrower, MangoGrower) ----------------------------------------
    @abc.abstractmethod
    def grown_layers(self) -> dict[str, torch.Tensor]:
        """Per-layer target tensors (q, k, v, o, fc1, fc2, their biases and norms), stacked over layers."""

    @abc.abstractmethod
    def boundary_maps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(out-map, in-map) of the residual width, used for embeddings, final norm and heads."""

    # --------------------------------------------------------------------------------------------
    def grown_parameters(self) -> dict[str, torch.Tensor]:
        """Every parameter of the target model, as a differentiable function of the operator."""
        t = self.config
        lay = self.grown_layers()
        per_layer = {"attn.qkv.weight": torch.cat([lay["q"], lay["k"], lay["v"]], dim=1),
                     "attn.proj.weight": lay["o"], "mlp.fc1.weight": lay["fc1"], "mlp.fc2.weight": lay["fc2"]}
        if t.bias:
            per_layer.update({"attn.qkv.bias": torch.cat([lay["q.bias"], lay["k.bias"], lay["v.bias"]], dim=1),
                              "attn.proj.bias": lay["o.bias"], "mlp.fc1.bias": lay["fc1.bias"],
                              "mlp.fc2.bias": lay["fc2.bias"]})
        for n in norm_names(t):
            per_layer[f"{n}.weight"] = lay[f"{n}.weight"]
            if norm_has_bias(t):
                per_layer[f"{n}.bias"] = lay[f"{n}.bias"]
        out: dict[str, torch.Tensor] = {}
        for name, stacked in per_layer.items():
            for i, w in enumerate(stacked.unbind(0)):
                out[f"blocks.{i}.{name}"] = w
        b, a = self.boundary_maps()  # (D_t, D_s) each
        # the norm feeding a tied decoder writes the decoder's in-dimension: it grows with the in-map A
        tied_norm = {"lm": "final_norm.", "mlm": "mlm_norm."}.get(t.head) if t.tie_embeddings else None
        for name in self._boundary:
            w, kind = self.src(f"edge.{name}"), _BOUNDARY[name]
            if tied_norm and name.startswith(tied_norm):
                out[name] = a @ w
            elif kind == "emb":
                out[name] = w @ b.t()  # (rows, D_t): out-dimension only, no division
            elif kind == "vec":
                out[name] = b @ w
            elif kind == "in":
                out[name] = w @ a.t()
            elif kind == "sq":
                out[name] = b @ w @ a.t()
            else:
                out[name] = w
        return out

    def forward(self, *args: Any, **kwargs: Any):
        """The target model's forward (same arguments, same ModelOutput) on the grown weights."""
        tensors = self.grown_parameters()
        for name in self._shell_buffers:
            tensors[name] = getattr(self, name)
        return functional_call(self._shell, tensors, args, kwargs, strict=True)

    @torch.no_grad()
    def materialise(self) -> TransformerLM:
        """A plain TransformerLM holding the grown weights (on the operator's device)."""
        params = {k: v.detach().clone() for k, v in self.grown_parameters().items()}
        device = next(iter(params.values())).device
        with torch.device(device):
            model = TransformerLM(self.config)
        model.load_state_dict(params, strict=True)
        return model.train(self.training)

    @torch.no_grad()
    def operator_forward_flops(self) -> float:
        """Matmul FLOPs of one materialisation (the operator's forward), counted by torch."""
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self.grown_parameters()
        return float(counter.get_total_flops())


# ---------------------------------------------------------------------------- fitting through fit()
def fit_operator(grower: GrowerBase, data, *, steps: int, lr: float, seed: int = 0,
                 fit_args: TrainArgs | dict | None = None, loss_fn=None, method: str = "learned") -> dict[str, Any]:
    """Fit ``grower`` through the one training loop; returns the info dict a lineage record needs.

    Defaults: a short warmup (LiGO's 10k-step warmup would barely lift the LR in 100 steps), no weight decay
    (it would pull the maps towards zero), no checkpoint. ``fit_args`` as a dict overrides fields; a
    TrainArgs is used as given (its max_steps and lr win over ``steps``/``lr``)."""
    loss_fn = loss_fn or model_loss
    n_op = sum(p.numel() for p in grower.parameters())
    info: dict[str, Any] = {"method": method, "operator_parameters": n_op, "steps": 0, "tokens": 0,
                            "flops": 0.0, "flops_target_training": 0.0, "flops_operator": 0.0}
    if isinstance(fit_args, TrainArgs):
        args = TrainArgs(**asdict(fit_args))
    elif steps <= 0:
        return info
    else:
        args = TrainArgs(**{**dict(max_steps=steps, lr=lr, warmup_steps=min(10, steps // 10), weight_decay=0.0,
                                   progress=False, seed=seed), **(fit_args or {})})
    if args.out_dir is not None:
        raise ValueError("operator fitting writes no checkpoint (its weights are the operator, not a model); "
                         "drop out_dir and save the materialised model instead (grow_checkpoint does)")
    device = resolve_device(args.device)
    grower.to(device)
    info["initial_val_loss"] = evaluate(grower, loss_fn, data.val_batches(), device, args.precision)["val_loss"]
    global_batch, seq_len = (int(n) for n in data.train_batch(0)["input_ids"].shape)
    forwards = global_batch // (args.micro_batch_size or global_batch)  # the operator runs once per micro-batch
    target_step = flops_mod.training_flops_per_token(grower.config, seq_len) * global_batch * seq_len
    operator_step = 3.0 * grower.operator_forward_flops() * forwards  # forward + 2x backward
    if args.flops_per_step is None:
        args.flops_per_step = target_step + operator_step
    res = fit(grower, loss_fn, data, args)
    info.update(steps=res.steps, tokens=res.tokens, flops=float(res.flops),
                flops_target_training=target_step * res.steps, flops_operator=operator_step * res.steps,
                final_loss=res.final_loss, final_val_loss=res.val_loss)
    log.info("%s operator: %d steps, %.3g FLOPs (%.1f%% operator matmuls), val loss %.4f -> %.4f", method,
             res.steps, res.flops, 100 * operator_step / max(target_step + operator_step, 1.0),
             info["initial_val_loss"], res.val_loss if res.val_loss is not None else float("nan"))
    return info


# ---------------------------------------------------------------------------- LiGO
class LiGOGrower(GrowerBase):
    """LiGO width (B/A with LiGO's tying) and depth (w) operators; see the module docstring for equations."""

    def __init__(self, src_model: TransformerLM, target_cfg: ModelConfig, *, init: str = "noisy",
                 share_width: bool = True, noise: float = 0.03, seed: int = 0) -> None:
        super().__init__(src_model, target_cfg)
        if init not in INITS:
            raise ValueError(f"init={init!r}; choose one of {INITS}")
        s, t = self.source_config, self.config
        gen = torch.Generator().manual_seed(seed)
        lw = 1 if share_width else s.n_layers
        g_q, g_kv = head_maps(s, t)
        p_emb = selection(cyclic_map(t.d_model, s.d_model), s.d_model)
        p_q, p_kv = selection(g_q, s.n_heads), selection(g_kv, s.n_kv_heads)
        p_f = selection(cyclic_map(t.d_ff, s.d_ff), s.d_ff)

        def width(p: torch.Tensor, layers: int) -> nn.Parameter:
            return nn.Parameter(torch.stack([init_width(p, init, noise, gen) for _ in range(layers)]))

        self.B_emb = nn.Parameter(init_width(p_emb, init, noise, gen))  # (D_t, D_s)
        self.H_q = width(p_q, lw)  # (Lw, Hq_t, Hq_s)
        self.H_k = width(p_kv, lw)  # (Lw, Hkv_t, Hkv_s)
        self.H_v = width(p_kv, lw)
        self.B_f = width(p_f, lw)  # (Lw, F_t, F_s)
        self.mha = s.n_kv_heads == s.n_heads and t.n_kv_heads == t.n_heads
        self.register_buffer("n_emb", inverse_counts(p_emb, init), persistent=False)
        self.register_buffer("n_y", inverse_counts(p_kv if self.mha else p_q, init), persistent=False)
        self.register_buffer("n_f", inverse_counts(p_f, init), persistent=False)
        self.modules_depth = ["q", "k", "v", "o", "fc1", "fc2", *norm_names(s)]
        self.depth = nn.Parameter(torch.stack([init_depth(t.n_layers, s.n_layers, init, noise, gen)
                                               for _ in self.modules_depth]))  # (modules, L_t, L_s)

    def boundary_maps(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.B_emb, self.B_emb * self.n_emb

    def grown_layers(self) -> dict[str, torch.Tensor]:
        s, t = self.source_config, self.config
        L, dh, P = s.n_layers, s.head_dim, (2 if s.activation == "swiglu" else 1)
        b_emb, a_emb = self.boundary_maps()

        def per_layer(m: torch.Tensor) -> torch.Tensor:  # (Lw, a, b) -> (L_s, a, b)
            return m.expand(L, -1, -1) if m.shape[0] == 1 else m

        hq, hk, hv, bf = (per_layer(m) for m in (self.H_q, self.H_k, self.H_v, self.B_f))
        a_y = (hv if self.mha else hq) * self.n_y  # in-map of the attention output, per head
        a_f = bf * self.n_f
        x = lambda k: self.src(f"layer.{k}")  # noqa: E731
        wide: dict[str, torch.Tensor] = {}
        for role, h, n in (("q", hq, s.n_heads), ("k", hk, s.n_kv_heads), ("v", hv, s.n_kv_heads)):
            w = x(role).view(L, n, dh, s.d_model)
            wide[role] = torch.einsum("lab,lbjd,ed->laje", h, w, a_emb).reshape(L, -1, t.d_model)
            if s.bias:
                wide[f"{role}.bias"] = torch.einsum("lab,lbj->laj", h, x(f"{role}.bias").view(L, n, dh)).reshape(L, -1)
        o = x("o").view(L, s.d_model, s.n_heads, dh)
        wide["o"] = torch.einsum("ed,ldbj,lab->leaj", b_emb, o, a_y).reshape(L, t.d_model, t.d_model)
        fc1 = x("fc1").view(L, P, s.d_ff, s.d_model)
        wide["fc1"] = torch.einsum("lfg,lpgd,ed->lpfe", bf, fc1, a_emb).reshape(L, P * t.d_ff, t.d_model)
        wide["fc2"] = torch.einsum("ed,ldg,lfg->lef", b_emb, x("fc2"), a_f)
        if s.bias:
            wide["o.bias"] = x("o.bias") @ b_emb.t()
            wide["fc2.bias"] = x("fc2.bias") @ b_emb.t()
            wide["fc1.bias"] = torch.einsum("lfg,lpg->lpf", bf, x("fc1.bias").view(L, P, s.d_ff)).reshape(L, -1)
        for n in norm_names(s):
            for kind in ("weight", "bias") if norm_has_bias(s) else ("weight",):
                wide[f"{n}.{kind}"] = x(f"{n}.{kind}") @ b_emb.t()
        index = {m: i for i, m in enumerate(self.modules_depth)}
        out = {}
        for key, w in wide.items():
            coeff = self.depth[index[key.split(".")[0]]]  # (L_t, L_s); a bias shares its weight's
            out[key] = torch.einsum("tl,l...->t...", coeff, w)
        return out


def _finish(grower: GrowerBase, src_model: TransformerLM, info: dict[str, Any]) -> tuple[TransformerLM, dict]:
    device = next(src_model.parameters()).device
    model = grower.materialise().to(device).train(src_model.training)
    info["target_config"] = grower.config.to_dict()
    info["target_training_flops_per_token"] = flops_mod.training_flops_per_token(grower.config)
    return model, info


def ligo_grow(src_model: TransformerLM, target_cfg: ModelConfig, data, *, steps: int = 100, lr: float = 1e-3,
              init: str = "noisy", seed: int = 0, fit_args: TrainArgs | dict | None = None, loss_fn=None,
              share_width: bool = True, noise: float = 0.03) -> tuple[TransformerLM, dict[str, Any]]:
    """Grow ``src_model`` to ``target_cfg`` with a LiGO operator fitted for ``steps`` steps on ``data``.

    ``data`` follows the training loop's contract (``train_batch(step)``, ``val_batches()``); ``steps=0``
    materialises the initial operator (``init="stack"``: exactly StackBERT / duplication). Returns the
    grown model (on the source's device) and an info dict: ``flops`` (operator fitting, target training
    FLOPs + operator matmuls), ``final_loss``, ``initial_val_loss``, ``final_val_loss``, ``steps``, ...
    The source model is never modified."""
    grower = LiGOGrower(src_model, target_cfg, init=init, share_width=share_width, noise=noise, seed=seed)
    info = fit_operator(grower, data, steps=steps, lr=lr, seed=seed, fit_args=fit_args, loss_fn=loss_fn,
                        method="ligo")
    info.update(init=init, share_width=share_width)
    return _finish(grower, src_model, info)


# ---------------------------------------------------------------------------- the growth registry
_CLAIM = ("no: a learned operator fitted on the target loss; with steps=0 and init='stack' it is the "
          "StackBERT/duplication map (exact when only widths grow and d_model by an integer factor)")


def _jsonable(value: Any) -> Any:
    if isinstance(value, TrainArgs):
        return asdict(value)
    if callable(value):
        return getattr(value, "__qualname__", repr(value))
    return value


def registry_method(grow_fn, name: str):
    """Adapt ``grow_fn(src, target_cfg, data, *, seed, **opts) -> (model, info)`` to the growth registry's
    ``fn(model, target_cfg, *, seed, **opts) -> GrowOutput``; ``data`` (a batch source) is a required option."""

    def method(model: TransformerLM, target_cfg: ModelConfig, *, seed: int = 0, data=None, **opts: Any) -> GrowOutput:
        if data is None:
            raise GrowthError(f"{name} fits its operator on the target model's loss: pass data=<batch source with "
                              f"train_batch(step) and val_batches()>, e.g. the corpus the target will train on")
        with torch.enable_grad():  # grow_model() calls methods under no_grad; fitting needs autograd
            grown, info = grow_fn(model, target_cfg, data, seed=seed, **opts)
        options = {"seed": seed, **{k: _jsonable(v) for k, v in opts.items()}, "operator": info}
        return GrowOutput(grown, None, float(info["flops"]), _CLAIM, options)

    method.__name__ = method.__qualname__ = f"{name}_method"
    method.options = [k for k in inspect.signature(grow_fn).parameters  # what `morphlm grow --help` lists
                      if k not in ("src_model", "target_cfg", "data", "seed", "fit_args", "loss_fn")]
    return method


register_method("ligo")(registry_method(ligo_grow, "ligo"))
