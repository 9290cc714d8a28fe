"""Width growth: bert2BERT FPI and AKI (Chen et al., ACL 2022, arXiv 2110.07143, §3), and MSG's width maps.

What grows: ``d_model`` (the residual stream), ``d_ff`` (FFN neurons) and attention by *head count* with a
fixed ``head_dim`` (d_model / n_heads must stay equal; changing head_dim would change RoPE frequencies and
the 1/√d_head score scale, so it is refused). Grouped-query attention grows query and kv heads together:
every target query head is a copy of a source query head and sits in a kv group whose kv head copies that
source head's kv head (:func:`~morphlm.grow.plans.gqa_head_maps`).

FPI (function-preserving initialisation), with g_D (residual), per-layer g_q / g_kv (heads) and g_F (neurons):
* embeddings (token, position, segment): out-dimension copy ``E'[:, i] = E[:, g_D(i)]``, no division;
* q/k/v rows follow the head maps, columns g_D divided by C (in-dimension); the output projection's
  rows follow g_D and its columns the query-head map, divided by the head counts;
* FFN: fc1 rows g_F (SwiGLU: the same map on gate and up), columns g_D ÷ C; fc2 rows g_D, columns g_F ÷ C;
* norms (LayerNorm/RMSNorm, every placement): weight and bias index-copied by g_D;
* heads: the norm that feeds a *tied* output embedding (final_norm, or mlm_norm for the masked-LM head)
  also divides by C, because the tied decoder reads the residual dimensions as its in-dimension; an untied
  lm_head, the MLM transform, the pooler and the classifier divide their in-dimension by C.

Exactness. Everything above is exact *except the norms' statistics*: a LayerNorm/RMSNorm over the grown
stream computes its mean/variance (mean square) over duplicated units, Σ_x C_x·f(h_x) / D. ``IndexMap.grow``
samples the extra units without replacement, so when D is a multiple of d every unit is copied exactly D/d
times and those statistics equal the source's: FPI is then function-preserving up to float32 rounding
(tests: max |Δlogits| < 1e-4, typically ~1e-6). When D is not a multiple of d the statistics shift and
FPI is only approximate (the gap bert2BERT reports, loss 1.70 vs 1.67). Growing only d_ff (or only kv
heads) never touches a norm and is exact for any sizes. A tied LM head with no final norm (final_norm=False
with pre-norm blocks) reads the duplicated stream directly and is not preserved.

AKI (advanced knowledge initialisation): every layer is first FPI-expanded; then, for l < L-1, the *new*
output units (rows) of q/k/v, the output projection, fc1 and fc2 (weights and biases) are replaced by the
same rows of layer l+1's FPI expansion, i.e. U^l[j] = Ũ^{l+1}[g^{l+1}_out(j)] for new j. The top layer keeps
FPI (the rule a public reimplementation uses; the paper's top-layer rule is unpublished — a
reconstruction). Norms and embeddings stay FPI. AKI breaks FPI's symmetry and is NOT function-preserving.

MSG width (``mode='msg'``): the same maps with every duplicate turned fresh: source weights sit at their
original positions, new units keep the target model's fresh initialisation, nothing is divided; the masks
of :class:`~morphlm.grow.depth.MaskedGrowth` make the grown model equal the source at mask 0.
"""

from __future__ import annotations

import torch

from ..model.config import ModelConfig
from ..surgery import IndexMap, ParamMap, check_same_family
from .errors import GrowthError
from .plans import gqa_head_maps

GROWABLE = ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len")

# the weights whose output units AKI takes from the layer above
AKI_PARAMS = ("attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
              "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")


def check_growable(src: ModelConfig, tgt: ModelConfig) -> None:
    """Raise GrowthError unless ``tgt`` is ``src`` with every size equal or larger and the same architecture."""
    check_same_family(src, tgt, GrowthError, ref_name="source", other_name="target", verb="growth")
    smaller = [f"{k} {getattr(src, k)} → {getattr(tgt, k)}" for k in GROWABLE if getattr(tgt, k) < getattr(src, k)]
    if smaller:
        raise GrowthError(f"the target is smaller than the source in {', '.join(smaller)}; growth only enlarges "
                          f"(to shrink a model use extraction/distillation)")
    if src.head_dim != tgt.head_dim:
        raise GrowthError(
            f"head_dim changes from {src.head_dim} to {tgt.head_dim} (d_model/n_heads); morphlm grows attention "
            f"by adding heads of the same size: use n_heads={tgt.d_model // src.head_dim} for d_model={tgt.d_model}"
            if tgt.d_model % src.head_dim == 0 else
            f"head_dim changes from {src.head_dim} to {tgt.head_dim} and d_model={tgt.d_model} is not a multiple "
            f"of {src.head_dim}; pick d_model as a multiple of the source head_dim {src.head_dim}")
    # raises a clear GrowthError when the kv grouping cannot be kept
    gqa_head_maps(src.n_heads, src.n_kv_heads, tgt.n_heads, tgt.n_kv_heads, torch.Generator().manual_seed(0))


def width_plan(src: ModelConfig, tgt: ModelConfig, generator: torch.Generator,
               mode: str = "fpi") -> dict[str, ParamMap]:
    """Recipes for every parameter of a model with ``tgt``'s widths and ``src``'s depth.

    ``mode='fpi'`` (also the base of AKI) or ``'msg'`` (duplicates become fresh units, nothing divided).
    Draws from ``generator`` in a fixed order, so a plan is reproducible from (configs, seed).
    """
    if mode not in ("fpi", "msg"):
        raise ValueError(f"mode={mode!r}: fpi | msg")
    msg = mode == "msg"

    def unit(n_src: int, n_tgt: int) -> IndexMap:
        m = IndexMap.grow(n_src, n_tgt, generator)
        return m.without_duplicates() if msg else m

    D = unit(src.d_model, tgt.d_model)
    hd = src.head_dim
    plan: dict[str, ParamMap] = {}
    IN = (1,)  # the in-dimension of a (out, in) weight: divided by the counts

    def linear(name: str, out_map, in_map, bias: bool) -> None:
        plan[f"{name}.weight"] = ParamMap(f"{name}.weight", (out_map, in_map), IN)
        if bias:
            plan[f"{name}.bias"] = ParamMap(f"{name}.bias", (out_map,))

    def norm(name: str, divide: bool = False) -> None:
        div = (0,) if divide else ()
        plan[f"{name}.weight"] = ParamMap(f"{name}.weight", (D,), div)
        if src.norm == "layernorm" and src.bias:
            plan[f"{name}.bias"] = ParamMap(f"{name}.bias", (D,), div)

    plan["tok_emb.weight"] = ParamMap("tok_emb.weight", (None, D))
    if src.position == "learned":
        plan["pos_emb.weight"] = ParamMap("pos_emb.weight", (IndexMap.extend(src.max_seq_len, tgt.max_seq_len), D))
    if src.n_segments:
        plan["seg_emb.weight"] = ParamMap("seg_emb.weight", (None, D))
    if src.embed_norm:
        norm("emb_norm")
    for layer in range(src.n_layers):
        qh, kvh = gqa_head_maps(src.n_heads, src.n_kv_heads, tgt.n_heads, tgt.n_kv_heads, generator)
        if msg:  # new query heads are fresh; kv copies stay (old query heads may need them after regrouping)
            qh = qh.without_duplicates()
        q, kv = qh.per_unit(hd), kvh.per_unit(hd)
        F = unit(src.d_ff, tgt.d_ff)
        p = f"blocks.{layer}."
        linear(p + "attn.qkv", IndexMap.cat([q, kv, kv]), D, src.bias)
        linear(p + "attn.proj", D, q, src.bias)
        linear(p + "mlp.fc1", IndexMap.cat([F, F]) if src.activation == "swiglu" else F, D, src.bias)
        linear(p + "mlp.fc2", D, F, src.bias)
        norms = ["norm1", "norm2"] + (["norm1_out", "norm2_out"] if src.norm_placement in ("sandwich", "dssn") else [])
        for n in norms:
            norm(p + n)
    tied = src.tie_embeddings
    if src.final_norm:
        norm("final_norm", divide=tied and src.head == "lm")
    if src.head in ("lm", "mlm") and not tied:
        plan["lm_head.weight"] = ParamMap("lm_head.weight", (None, D), IN)
    if src.head == "mlm":
        linear("mlm_dense", D, D, bias=True)  # the MLM transform and the pooler always have a bias
        norm("mlm_norm", divide=tied)
        plan["mlm_bias"] = ParamMap("mlm_bias", (None,))
    elif src.head == "cls":
        linear("pooler", D, D, bias=True)
        linear("classifier", None, D, bias=True)
    return plan


def aki_patch(state: dict[str, torch.Tensor], plan: dict[str, ParamMap], n_layers: int) -> None:
    """AKI in place on an FPI-expanded state: new rows of layer l ← the same rows of layer l+1 (l < L-1)."""
    for layer in range(n_layers - 1):
        for rest in AKI_PARAMS:
            name, upper = f"blocks.{layer}.{rest}", f"blocks.{layer + 1}.{rest}"
            if name not in state:
                continue
            rows = plan[name].maps[0].is_new
            if bool(rows.any()):
                state[name][rows] = state[upper][rows]  # layer l+1 is read before it is patched itself
