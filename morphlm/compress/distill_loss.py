"""TinyBERT-style knowledge distillation losses (+ their learnable projections) for the one training loop.

TinyBERT (Jiao et al. 2020, arXiv 1909.10351, §3.1 eq. 7-11) distils a teacher of
N layers into a student of M layers through a layer mapping n = g(m):

    L = Σ_m λ_m · L_layer(S_m, T_g(m))
    L_embd = MSE(E^S W_e, E^T)                     (m = 0: embedding outputs)
    L_attn = (1/h) Σ_i MSE(A_i^S, A_i^T)           (1 ≤ m ≤ M: pre-softmax scores q·kᵀ/√d_k)
    L_hidn = MSE(H^S W_h, H^T)                     (1 ≤ m ≤ M: block outputs)
    L_pred = −Σ_c softmax(z^T/t)_c · log softmax(z^S/t)_c   (m = M+1: logits)

The teacher and the student talk only through the model output contract (:class:`ModelOutput`: ``logits``,
``hidden_states`` = embeddings + every block, ``attentions`` = raw pre-softmax scores per block), so any
module honouring it — a native model, or one imported from Hugging Face through :mod:`morphlm.interop` —
can be a teacher. :class:`DistillLoss` is called as ``loss_fn(model, batch) -> (loss, metrics)`` by
:func:`morphlm.train.loop.fit`; its learnable projections W_e/W_h are handed to ``fit(aux_modules=...)`` so
fit's optimizer trains them and the run's ``state/`` stores them (exact resume).

Reduction and temperature convention (ONE for every stage; differs from some toolkits, see below)
---------------------------------------------------------------------------------------------------
* Valid positions: token t of row b is valid when ``attention_mask[b, t] == 1`` (all tokens without a
  mask). An attention entry (b, i, j) is valid when query i and key j are both valid and, if either model
  is causal, j ≤ i. Padded or future entries never enter a loss (no −inf, no zero-filled entries).
* Every MSE term is the **mean over valid elements** of one mapped layer: attention over (batch, heads,
  valid i, valid j); hidden/embedding over (valid tokens, teacher width). Terms of different mapped layers
  are **summed** (as in TinyBERT's code). Heads meet as ``head_map`` says (below); with the default
  ``auto``, equal head counts are matched one to one (the 1/h Σ_i of eq. 9 is the mean over heads); if the
  teacher has k·h_S heads, each student head is matched to the mean of k consecutive teacher heads;
  otherwise both sides are averaged over all heads (a reconstruction — TinyBERT assumes equal head counts).
* Prediction: ``L_pred = t² · mean_rows Σ_c −p_T(c)·log p_S(c)`` with p = softmax(z/t). Rows are
  examples (classification logits (B, C)) or valid token positions (LM logits (B, T, V)). The t² factor
  (Hinton et al. 2015) keeps gradient magnitudes independent of t; at t = 1 this is exactly the paper's
  eq. 11 averaged over the batch. TinyBERT's code averages over classes as well (our value / C), and
  TextBrewer omits t²; DistilBERT uses t²·KL (= ours minus the teacher's entropy, same gradient).
* Hard labels (``hard_label_weight``): plain cross entropy of the student on the gold labels, mean over
  labelled rows.
* Total = Σ weight · term; the metrics report every term before weighting.

Scale-aware variants (``DistillConfig.att_loss`` / ``head_map`` / ``hid_loss``)
-------------------------------------------------------------------------------
A real pretrained teacher has pre-softmax scores far larger than a fresh student's, so TinyBERT's raw
score MSE can dominate the total and much of it is a per-query-row constant that softmax ignores. The
variants below keep the masks and reductions above (the defaults reproduce TinyBERT exactly):

* ``att_loss="mse"``: TinyBERT's raw score MSE, mean over valid (batch, head, i, j).
* ``att_loss="centred"``: each score row (batch, head, query i) of both models minus its mean over the valid
  keys of that row (padding and future keys enter neither the mean nor the loss), then the same MSE. A
  student equal to the teacher up to a constant per row — the same attention distribution — scores 0.
* ``att_loss="kl"`` (default): MiniLM (Wang et al. 2020, arXiv 2002.10957, §3.1): KL(A_T ‖ A_S) of the
  attention distributions, A = softmax over the valid keys of each row (padding and, for causal models,
  future keys get probability 0); Σ over keys, **mean over valid (batch, head, query) rows**. MiniLM
  transfers one layer with equal head counts; per mapped layer and across head counts it is a
  reconstruction. Computed in float32.
* ``head_map`` — how teacher heads meet student heads, for every ``att_loss``: ``auto`` (above), ``mean``
  (each student head ↔ the mean of its group of k = h_T/h_S consecutive teacher heads; an error when h_T is
  not a multiple of h_S), ``subset`` (one teacher head per student head, evenly spaced: teacher head
  ⌊i·h_T/h_S⌋, so 12 → 4 uses heads 0, 3, 6, 9; needs h_T ≥ h_S), or an explicit list of 0-based teacher
  heads, one per student head (``"0,4,8,11"``; the same for every mapped layer). For ``mse``/``centred`` a
  mean over heads is a mean of scores; for ``kl`` it is the mean of the heads' probabilities (a
  distribution), and ``auto``'s all-heads fallback averages the student's head probabilities too.
* ``hid_loss`` — every hidden-state term, i.e. the embedding term (emb) and the block outputs (hid):
  ``mse`` (TinyBERT); ``normalized`` (default) = that MSE divided by the variance of the teacher's hidden
  state over the valid tokens and all features of that layer (one detached scalar per layer and batch):
  scale-free, ≈ 1 for a student that outputs the teacher's mean vector; ``cosine`` = mean over valid
  tokens of 1 − cos(W h_S, h_T) (scale-free per token; DistilBERT's alignment term).

Weights
-------
The total is ``Σ weight · term`` over emb, att, hid, pred and hard, with the weights of
:meth:`DistillConfig.weights` (1 for the stage's own terms unless given); the metrics ``loss_<term>`` are
unweighted. A weight only means something relative to the term's gradient: terms on different scales
(raw scores of RMS 3-4 against hidden states normalised to ≈ 1) pull with very different strength at the
same weight. :func:`term_gradient_norms` measures, per term, the L2 norm of its unweighted gradient over the
student's trainable parameters on one batch; ``weight · norm`` is that term's pull, which is how weights
should be chosen and documented (the scale-free variants make the norms comparable across teachers).

Defaults (chosen by measurement)
--------------------------------
``att_loss="kl"``, ``hid_loss="normalized"``, ``head_map="auto"``, every weight 1. Measured with the MiniLM
teacher (all-MiniLM-L6-v2 fine-tuned on SST-2, 79.8% dev; 6 layers, 12 heads, d = 384) and a 4-layer, d = 64,
4-head student, uniform map, one SST-2 batch of 32 × 64 tokens under bf16 autocast, ``term_gradient_norms``
of the unweighted terms (stage ``full``):

=====================  ==========  ===========  ==========  ==================  ========
student init           att mse     att centred  att kl      hid mse/norm./cos.  pred
=====================  ==========  ===========  ==========  ==================  ========
random                 3.07        0.45         0.49        2.6 / 7.9 / 2.3     0.53
teacher-layer slices   11.3        5.0          6.0         0.7 / 1.9 / 1.4     0.42
=====================  ==========  ===========  ==========  ==================  ========

The raw score MSE pulls 6x (random init) to 27x (slices) harder than the prediction loss and its value is
32.5 against 12.3 for the centred form: most of it is the per-row offset softmax ignores. KL and centred MSE
bring the attention pull to the prediction loss's size from random init. The variance-normalised hidden term
makes the hidden pull independent of the teacher's activation scale (MiniLM's hidden states are not of unit
variance), at the cost of a larger pull than the prediction loss from random init, which the two-stage
recipe (intermediate stage first, prediction stage second) separates in time. Task distillation from the
slices (100 intermediate + 300 prediction steps, one seed) ended at 77.6% (mse/mse), 77.9% (kl/normalized)
and 78.6% (centred/normalized): equal within one seed's noise, so the choice rests on the gradient balance
above; ``morphlm bench compression`` runs every TinyBERT arm with these forms. TinyBERT's own forms remain
``att_loss="mse"``, ``hid_loss="mse"`` (TernaryBERT's QAT uses them: its teacher and student start equal).

Stages (``DistillConfig.stage``)
--------------------------------
``general`` (task-agnostic, on unlabelled text: emb + att + hid), ``intermediate`` (task stage a, same
losses on task data), ``prediction`` (task stage b: soft CE only), ``logit`` (plain Hinton logit
distillation: soft CE + hard-label CE, the KD baseline), ``full`` (emb + att + hid + pred in one loss,
TernaryBERT's distillation-aware training).

Layer maps (``DistillConfig.layer_map``) are :class:`morphlm.surgery.LayerMap` s, the one convention of
every verb: one **0-based** teacher block per student block (``None``, or ``-`` in a string, = this student
block gets no intermediate supervision), e.g. ``"1,3,5"`` pairs student blocks 0,1,2 with teacher blocks 1,3,5;
or ``uniform`` (g(m) = ⌊(m+1)·N/M⌋ - 1, TinyBERT's g(m) = 3m for 4 of 12 → 2,5,8,11), ``top`` (the last M
teacher blocks) or ``bottom`` (the first M). Student block m, mapped to teacher block g, compares
``hidden_states[m + 1]`` with the teacher's ``hidden_states[g + 1]`` and ``attentions[m]`` with ``attentions[g]``.
The embedding loss always maps student embeddings to teacher embeddings.

The orchestration (``distill()`` through fit, the ``morphlm distill`` stages) is :mod:`morphlm.compress.distill`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..surgery import LayerMap, is_monotone, parse_layer_map
from .errors import CompressionError, StrictConfig

__all__ = [
    "STAGES", "PROJECTIONS", "DistillConfig", "DistillLoss", "teacher_layer_map", "is_monotone", "attention_mse",
    "hidden_mse", "soft_cross_entropy", "distill_flops_per_token", "check_compatible", "ATT_LOSSES", "HEAD_MAPS",
    "HID_LOSSES", "HeadMatch", "resolve_head_map", "attention_centred_mse", "attention_kl", "attention_loss",
    "hidden_normalized_mse", "hidden_cosine", "hidden_loss", "term_gradient_norms",
]

STAGES = ("general", "intermediate", "prediction", "logit", "full")
_TERMS = {
    "general": ("emb", "att", "hid"),
    "intermediate": ("emb", "att", "hid"),
    "prediction": ("pred",),
    "logit": ("pred", "hard"),
    "full": ("emb", "att", "hid", "pred"),
}
PROJECTIONS = ("shared", "per_layer", "none")
ATT_LOSSES = ("mse", "centred", "kl")
HID_LOSSES = ("mse", "normalized", "cosine")
HEAD_MAPS = ("auto", "mean", "subset")  # or an explicit list: one 0-based teacher head per student head


# ---------------------------------------------------------------------------------------------- layer maps
def teacher_layer_map(spec: str | Sequence[int | None] | LayerMap | None, n_teacher: int, n_student: int, *,
                      monotone: bool = False) -> LayerMap:
    """A distillation layer map — ``uniform`` (default) | ``top`` | ``bottom`` | 0-based teacher blocks per
    student block (``"1,3,5"``, ``None``/``-`` = unsupervised) — as a validated :class:`~morphlm.surgery.LayerMap`."""
    return parse_layer_map(spec, n_teacher, n_student, names=("uniform", "top", "bottom"), default="uniform",
                           allow_gaps=True, monotone=monotone, roles=("teacher", "student"), error=CompressionError)


# ---------------------------------------------------------------------------------------------- config
@dataclass
class DistillConfig(StrictConfig):
    """What to distil and how. ``None`` weights take the stage's defaults (1 for its terms, else 0)."""

    stage: str = "general"
    layer_map: str | list[int | None] = "uniform"  # a LayerMap form (0-based teacher blocks), see the docstring
    temperature: float = 1.0
    emb_weight: float | None = None
    att_weight: float | None = None
    hid_weight: float | None = None
    pred_weight: float | None = None
    hard_label_weight: float | None = None  # None -> 1 for stage 'logit', else 0
    projection: str = "shared"  # shared (TinyBERT code: one fit_dense for all) | per_layer | none
    monotone: bool = False  # require a non-decreasing layer map
    freeze_embeddings: bool = False  # LightMBERT: the student's embedding layer is not trained
    teacher_path: str | None = None  # informational (lineage)
    # defaults chosen by measurement with a real teacher (MiniLM, see "Defaults" in the module docstring); the
    # TinyBERT paper's forms are att_loss="mse", hid_loss="mse"
    att_loss: str = "kl"  # mse (TinyBERT raw scores) | centred (row-centred scores) | kl (MiniLM distributions)
    head_map: str | list[int] = "auto"  # auto | mean | subset | one 0-based teacher head per student head
    hid_loss: str = "normalized"  # mse (TinyBERT) | normalized (÷ teacher variance) | cosine (1 − cos)

    def __post_init__(self) -> None:
        if self.layer_map is not None and not isinstance(self.layer_map, str):
            self.layer_map = list(self.layer_map)  # a LayerMap / tuple → a plain list: to_dict() stays JSON-ready
        self.head_map = _parse_head_map(self.head_map)

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise CompressionError(f"unknown distillation stage {self.stage!r}; choose one of {STAGES}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise CompressionError(f"temperature={self.temperature!r} must be > 0 (1 = TinyBERT, 2-4 for "
                                   f"Hinton-style logit distillation)")
        if self.projection not in PROJECTIONS:
            raise CompressionError(f"projection={self.projection!r}; choose one of {PROJECTIONS}")
        if self.att_loss not in ATT_LOSSES:
            raise CompressionError(f"att_loss={self.att_loss!r} is unknown; choose one of {ATT_LOSSES} (mse: "
                                   f"TinyBERT's raw score MSE, centred: row-centred scores, kl: MiniLM's KL of "
                                   f"attention distributions)")
        if self.hid_loss not in HID_LOSSES:
            raise CompressionError(f"hid_loss={self.hid_loss!r} is unknown; choose one of {HID_LOSSES} (mse: "
                                   f"TinyBERT, normalized: MSE ÷ the teacher's variance, cosine: 1 − cos)")
        _check_head_map_form(self.head_map)
        for name in ("emb", "att", "hid", "pred", "hard_label"):
            w = getattr(self, f"{name}_weight")
            if w is not None and (not isinstance(w, (int, float)) or w < 0):
                raise CompressionError(f"{name}_weight={w!r} must be a number >= 0")
        if all(v == 0 for v in self.weights().values()):
            raise CompressionError(f"stage {self.stage!r} with these weights has no loss term left; "
                                   f"give at least one positive weight")

    def weights(self) -> dict[str, float]:
        """Effective weight of every term: emb, att, hid, pred, hard."""
        on = _TERMS[self.stage]
        out = {}
        for term, attr in (("emb", "emb_weight"), ("att", "att_weight"), ("hid", "hid_weight"),
                           ("pred", "pred_weight"), ("hard", "hard_label_weight")):
            w = getattr(self, attr)
            out[term] = float(w) if w is not None else (1.0 if term in on else 0.0)
        return out


# ---------------------------------------------------------------------------------------------- loss terms
def _valid_tokens(attention_mask: torch.Tensor | None, B: int, T: int, device) -> torch.Tensor:
    if attention_mask is None:
        return torch.ones(B, T, dtype=torch.bool, device=device)
    return attention_mask.bool()


# ---------------------------------------------------------------------------------------------- head maps
def _parse_head_map(spec):
    """``head_map`` as stored: a name, or an explicit list of ints (``"0,4,8,11"`` and tuples become a list, so
    ``to_dict()`` records a JSON list). Anything else is kept as given for :meth:`DistillConfig.validate` to name."""
    if isinstance(spec, str):
        text = spec.strip()
        if text in HEAD_MAPS:
            return text
        parts = [p.strip() for p in text.split(",")]
        if parts and all(p.lstrip("-").isdigit() for p in parts):
            return [int(p) for p in parts]
        return spec
    if isinstance(spec, (list, tuple)) and all(isinstance(h, int) and not isinstance(h, bool) for h in spec):
        return list(spec)
    return spec


def _check_head_map_form(spec) -> None:
    if isinstance(spec, str) and spec in HEAD_MAPS:
        return
    if isinstance(spec, list) and spec and all(isinstance(h, int) and not isinstance(h, bool) for h in spec):
        bad = [h for h in spec if h < 0]
        if bad:
            raise CompressionError(f"head_map {spec} names negative teacher heads {bad}; teacher heads are 0-based")
        return
    raise CompressionError(f"head_map={spec!r} is unknown; choose one of {HEAD_MAPS} or one 0-based teacher head "
                           f"per student head, e.g. '0,4,8,11'")


@dataclass(frozen=True)
class HeadMatch:
    """How teacher heads meet student heads in one attention term (resolved for the actual head counts).

    ``kind``: ``identity`` (equal counts, head i ↔ head i) | ``group`` (student head i ↔ the mean of teacher
    heads i·k … i·k+k−1) | ``all`` (both sides averaged over all their heads: one comparison) | ``index``
    (student head i ↔ teacher head ``index[i]``). Means are of raw scores for the score losses and of
    probabilities for ``kl``."""

    kind: str
    group: int = 1
    index: tuple[int, ...] = ()


def resolve_head_map(spec, n_teacher: int, n_student: int) -> HeadMatch:
    """The :class:`HeadMatch` of a ``head_map`` spec for ``n_teacher`` → ``n_student`` heads (clear errors)."""
    spec = _parse_head_map(spec)
    _check_head_map_form(spec)
    if isinstance(spec, list):
        if len(spec) != n_student:
            raise CompressionError(f"head_map {spec} has {len(spec)} entries but the student has {n_student} heads; "
                                   f"give one 0-based teacher head per student head")
        bad = [h for h in spec if h >= n_teacher]
        if bad:
            raise CompressionError(f"head_map {spec} names teacher heads {bad}; the teacher has heads "
                                   f"0..{n_teacher - 1}")
        return HeadMatch("index", index=tuple(spec))
    if spec == "subset":
        if n_teacher < n_student:
            raise CompressionError(f"head_map 'subset' picks one teacher head per student head, but the teacher has "
                                   f"{n_teacher} heads and the student {n_student}; use 'auto' or an explicit list")
        return HeadMatch("index", index=tuple(i * n_teacher // n_student for i in range(n_student)))
    if n_teacher == n_student:
        return HeadMatch("identity")
    if n_teacher % n_student == 0:
        return HeadMatch("group", group=n_teacher // n_student)
    if spec == "mean":
        raise CompressionError(f"head_map 'mean' averages groups of teacher heads, but {n_teacher} teacher heads "
                               f"do not split into {n_student} equal groups; use 'auto' (all-heads mean), 'subset' "
                               f"or an explicit list")
    return HeadMatch("all")  # auto with non-divisible counts: a reconstruction (TinyBERT assumes equal counts)


def _map_scores(s: torch.Tensor, t: torch.Tensor, match: HeadMatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(student, teacher) score tensors with equal head counts under ``match`` (means of scores)."""
    B, Hs, T, _ = s.shape
    if match.kind == "group":
        t = t.view(B, Hs, match.group, T, T).mean(dim=2)
    elif match.kind == "index":
        t = t[:, list(match.index)]
    elif match.kind == "all":
        s, t = s.mean(dim=1, keepdim=True), t.mean(dim=1, keepdim=True)
    return s, t


def _pair_mask(attention_mask, B: int, T: int, causal: bool, device) -> torch.Tensor:
    """(B, T, T): query i valid & key j valid (& j ≤ i for causal models)."""
    valid = _valid_tokens(attention_mask, B, T, device)
    pair = valid[:, :, None] & valid[:, None, :]
    if causal:
        pair = pair & torch.ones(T, T, dtype=torch.bool, device=device).tril()
    return pair


def _match(s: torch.Tensor, t: torch.Tensor, head_map) -> HeadMatch:
    return head_map if isinstance(head_map, HeadMatch) else resolve_head_map(head_map, t.shape[1], s.shape[1])


def attention_mse(s: torch.Tensor, t: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  causal: bool = False, head_map="auto") -> torch.Tensor:
    """MSE of pre-softmax attention scores, mean over valid (batch, head, query, key) entries (TinyBERT eq. 9).

    s: (B, Hs, T, T); t: (B, Ht, T, T). Heads meet as ``head_map`` says (:func:`resolve_head_map`; ``auto``:
    equal → one to one; Ht = k·Hs → each student head against the mean of k consecutive teacher heads;
    otherwise both averaged over heads, a reconstruction)."""
    B, _, T, _ = s.shape
    s, t = _map_scores(s, t.to(s.dtype), _match(s, t, head_map))
    pair = _pair_mask(attention_mask, B, T, causal, s.device)[:, None].expand_as(s)  # (B, H, T, T)
    diff = (s - t).masked_select(pair)
    return (diff * diff).mean() if diff.numel() else s.sum() * 0.0


def attention_centred_mse(s: torch.Tensor, t: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          causal: bool = False, head_map="auto") -> torch.Tensor:
    """MSE of attention scores centred per query row: for each (batch, head, query i) the mean over the valid
    keys j of that row (padding and, for causal models, future keys excluded) is subtracted from both score
    rows before the squared error; mean over valid (batch, head, i, j) entries, like :func:`attention_mse`.

    Softmax ignores a constant added to a score row, so a student that differs from the teacher by such an
    offset has loss exactly 0 here (it would pay the offset² under raw MSE). Heads meet as in
    :func:`attention_mse` (means of scores; centring commutes with those means)."""
    B, _, T, _ = s.shape
    s, t = _map_scores(s, t.to(s.dtype), _match(s, t, head_map))
    pair = _pair_mask(attention_mask, B, T, causal, s.device)[:, None].expand_as(s)  # (B, H, T, T)
    d = (s - t).masked_fill(~pair, 0.0)
    n_keys = pair.sum(dim=-1, keepdim=True)  # valid keys per row (0 for padded queries)
    d = d - d.sum(dim=-1, keepdim=True) / n_keys.clamp_min(1)
    diff = d.masked_select(pair)
    return (diff * diff).mean() if diff.numel() else s.sum() * 0.0


_NEG = -1e9  # masked scores: exp underflows to exactly 0 in float32, and everything stays finite (no NaN grads)


def attention_kl(s: torch.Tensor, t: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 causal: bool = False, head_map="auto") -> torch.Tensor:
    """KL(A_T ‖ A_S) of attention distributions (MiniLM, Wang et al. 2020, arXiv 2002.10957, §3.1, self-attention
    distribution transfer; its value-relation term is not implemented here).

    A = softmax of the scores over the valid keys of each query row (padding and, for causal models, future
    keys excluded); KL = Σ_j A_T(j)·(log A_T(j) − log A_S(j)); mean over valid (batch, head, query) rows.
    Heads meet as ``head_map`` says; a mean over teacher heads (``group``, ``all``) is the mean of their
    PROBABILITIES (a distribution), and ``all`` averages the student's head probabilities too. MiniLM
    transfers the last layer only with equal head counts; mapping layers and unequal head counts this way
    is our reconstruction. Computed in float32."""
    B, Hs, T, _ = s.shape
    match = _match(s, t, head_map)
    pair = _pair_mask(attention_mask, B, T, causal, s.device)  # (B, T, T)
    query = pair.any(dim=-1)  # (B, T): rows with at least one valid key = valid queries
    keys = (pair | ~query[:, :, None])[:, None]  # padded query rows softmax over all keys (finite), dropped below
    log_s = s.float().masked_fill(~keys, _NEG).log_softmax(dim=-1)  # (B, Hs, T, T)
    p_t = t.float().masked_fill(~keys, _NEG).softmax(dim=-1)  # (B, Ht, T, T)
    if match.kind == "group":
        p_t = p_t.view(B, Hs, match.group, T, T).mean(dim=2)
    elif match.kind == "index":
        p_t = p_t[:, list(match.index)]
    elif match.kind == "all":
        p_t = p_t.mean(dim=1, keepdim=True)
        log_s = torch.logsumexp(log_s, dim=1, keepdim=True) - math.log(Hs)
    kl = (torch.xlogy(p_t, p_t) - p_t * log_s).sum(dim=-1)  # (B, H, T); masked keys have p_t = 0 exactly
    rows = kl.masked_select(query[:, None].expand_as(kl))
    return rows.mean() if rows.numel() else s.sum() * 0.0


def attention_loss(kind: str, s: torch.Tensor, t: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   causal: bool = False, head_map="auto") -> torch.Tensor:
    """The attention term named by ``kind`` (one of :data:`ATT_LOSSES`)."""
    fn = {"mse": attention_mse, "centred": attention_centred_mse, "kl": attention_kl}.get(kind)
    if fn is None:
        raise CompressionError(f"att_loss={kind!r} is unknown; choose one of {ATT_LOSSES}")
    return fn(s, t, attention_mask, causal, head_map)


def hidden_mse(s: torch.Tensor, t: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE of (already projected) hidden states (B, T, D), mean over valid tokens × D."""
    B, T, D = t.shape
    valid = _valid_tokens(attention_mask, B, T, s.device)  # (B, T)
    diff = (s - t.to(s.dtype))[valid]  # (n_valid, D)
    return (diff * diff).mean() if diff.numel() else s.sum() * 0.0


def hidden_normalized_mse(s: torch.Tensor, t: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          eps: float = 1e-12) -> torch.Tensor:
    """:func:`hidden_mse` divided by the variance of the teacher's hidden state over the valid tokens and all
    features of this layer (one scalar, detached; floored at ``eps``). Scale-free: multiplying the teacher
    and the (projected) student by the same factor leaves it unchanged; a student that outputs the teacher's
    mean vector scores about 1."""
    B, T, D = t.shape
    valid = _valid_tokens(attention_mask, B, T, s.device)
    tv = t.to(s.dtype)[valid]  # (n_valid, D)
    if not tv.numel():
        return s.sum() * 0.0
    var = tv.detach().float().var(unbiased=False).clamp_min(eps)
    diff = s[valid] - tv
    return (diff * diff).mean() / var.to(diff.dtype)


def hidden_cosine(s: torch.Tensor, t: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over valid tokens of 1 − cos(s_tok, t_tok) of (already projected) hidden states (B, T, D):
    scale-free per token (the DistilBERT-style cosine alignment)."""
    B, T, D = t.shape
    valid = _valid_tokens(attention_mask, B, T, s.device)
    sv, tv = s[valid], t.to(s.dtype)[valid]
    if not sv.numel():
        return s.sum() * 0.0
    return (1.0 - F.cosine_similarity(sv, tv, dim=-1, eps=1e-8)).mean()


def hidden_loss(kind: str, s: torch.Tensor, t: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The hidden-state term named by ``kind`` (one of :data:`HID_LOSSES`)."""
    fn = {"mse": hidden_mse, "normalized": hidden_normalized_mse, "cosine": hidden_cosine}.get(kind)
    if fn is None:
        raise CompressionError(f"hid_loss={kind!r} is unknown; choose one of {HID_LOSSES}")
    return fn(s, t, attention_mask)


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """t² · mean over rows of Σ_c −softmax(z_T/t)_c · log softmax(z_S/t)_c (module docstring).

    Logits (B, C) → rows are examples; (B, T, V) → rows are valid token positions."""
    s = student_logits.float() / temperature
    t = teacher_logits.float() / temperature
    ce = -(t.softmax(dim=-1) * s.log_softmax(dim=-1)).sum(dim=-1)  # (B,) or (B, T)
    if ce.dim() == 2 and attention_mask is not None:
        ce = ce[attention_mask.bool()]
    return ce.mean() * (temperature ** 2)


# ---------------------------------------------------------------------------------------------- the loss
def _cfg_of(model: nn.Module):
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise CompressionError(f"{type(model).__name__} has no .config; distillation needs models with a "
                               f"ModelConfig-like config (vocab_size, d_model, n_layers, n_heads); import "
                               f"Hugging Face models through morphlm.interop first")
    return cfg


def check_compatible(teacher_cfg, student_cfg, stage: str) -> None:
    """Teacher and student must read the same token ids; prediction losses need equal output sizes."""
    if teacher_cfg.vocab_size != student_cfg.vocab_size:
        raise CompressionError(
            f"teacher vocab_size {teacher_cfg.vocab_size} != student vocab_size {student_cfg.vocab_size}: they "
            f"must share one tokenizer; build the student with vocab_size={teacher_cfg.vocab_size} (and the "
            f"teacher's tokenizer.json)")
    if stage in ("prediction", "logit", "full"):
        if teacher_cfg.head != student_cfg.head:
            raise CompressionError(f"prediction-layer distillation needs the same head on both sides (teacher "
                                   f"{teacher_cfg.head!r}, student {student_cfg.head!r}); give the student "
                                   f"head={teacher_cfg.head!r}")
        if teacher_cfg.head == "cls" and teacher_cfg.n_classes != student_cfg.n_classes:
            raise CompressionError(f"teacher has {teacher_cfg.n_classes} classes, student {student_cfg.n_classes}; "
                                   f"give the student n_classes={teacher_cfg.n_classes}")


class DistillLoss(nn.Module):
    """``loss_fn(student, batch) -> (loss, metrics)`` for :func:`fit`; holds the learnable projections.

    The teacher is stored unregistered (``self.teacher``): ``parameters()``/``state_dict()`` hold only the
    projections, so passing this module as ``fit(aux_modules=...)`` trains and saves exactly those. The
    teacher is run in eval mode without gradients and moved to the batch's device on first use."""

    def __init__(self, teacher: nn.Module, student_config, cfg: DistillConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or DistillConfig()
        cfg.validate()
        tcfg = _cfg_of(teacher)
        check_compatible(tcfg, student_config, cfg.stage)
        self.cfg = cfg
        self.__dict__["teacher"] = teacher  # not a submodule: never trained, never saved with the aux state
        self.teacher_config = tcfg
        self.student_config = student_config
        self.w = cfg.weights()
        self.layer_map = teacher_layer_map(cfg.layer_map, tcfg.n_layers, student_config.n_layers,
                                           monotone=cfg.monotone)
        self.causal = bool(getattr(tcfg, "causal", False) or getattr(student_config, "causal", False))
        self.needs_hidden = self.w["emb"] > 0 or self.w["hid"] > 0
        self.needs_att = self.w["att"] > 0
        self.head_match = None  # resolved from the configs' head counts (clear errors before any training)
        if self.needs_att:
            nt, ns = getattr(tcfg, "n_heads", None), getattr(student_config, "n_heads", None)
            if isinstance(nt, int) and isinstance(ns, int):
                self.head_match = resolve_head_map(cfg.head_map, nt, ns)
        ds, dt = student_config.d_model, tcfg.d_model
        self.proj = nn.ModuleDict()
        if self.needs_hidden:
            if cfg.projection == "none":
                if ds != dt:
                    raise CompressionError(f"projection='none' needs equal widths (student {ds}, teacher {dt}); "
                                           f"use projection='shared'")
            elif cfg.projection == "shared":
                self.proj["shared"] = self._make_proj(ds, dt)
            else:
                if self.w["emb"] > 0:
                    self.proj["emb"] = self._make_proj(ds, dt)
                if self.w["hid"] > 0:
                    for m, g in enumerate(self.layer_map, start=1):  # keys layer1..layerM (saved state)
                        if g is not None:
                            self.proj[f"layer{m}"] = self._make_proj(ds, dt)

    @staticmethod
    def _make_proj(ds: int, dt: int) -> nn.Linear:
        lin = nn.Linear(ds, dt)
        if ds == dt:  # equal widths: start at the identity, so an identical student has zero loss
            with torch.no_grad():
                lin.weight.copy_(torch.eye(dt))
                lin.bias.zero_()
        return lin

    def project(self, h: torch.Tensor, key: str) -> torch.Tensor:
        if self.cfg.projection == "none":
            return h
        return self.proj["shared" if self.cfg.projection == "shared" else key](h)

    def _teacher_forward(self, inputs: dict[str, torch.Tensor]):
        teacher = self.teacher
        dev = inputs["input_ids"].device
        p = next(teacher.parameters(), None)
        if p is not None and p.device != dev:
            teacher.to(dev)
        if teacher.training:
            teacher.eval()
        with torch.no_grad():
            return teacher(**inputs, output_hidden_states=self.needs_hidden, output_attentions=self.needs_att)

    def terms(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        """(unweighted terms {emb, att, hid, pred, hard} with a positive weight, student output)."""
        w = self.w
        cfg = self.cfg
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        mask = batch.get("attention_mask")
        labels = batch.get("labels")
        s_out = model(**inputs, output_hidden_states=self.needs_hidden, output_attentions=self.needs_att)
        t_out = self._teacher_forward(inputs)
        terms: dict[str, torch.Tensor] = {}
        if w["emb"] > 0:
            terms["emb"] = hidden_loss(cfg.hid_loss, self.project(s_out.hidden_states[0], "emb"),
                                       t_out.hidden_states[0], mask)
        if w["att"] > 0 or w["hid"] > 0:
            att = hid = None
            heads = self.head_match if self.head_match is not None else cfg.head_map
            for m, g in enumerate(self.layer_map):  # student block m ↔ teacher block g (0-based)
                if g is None:
                    continue
                if w["att"] > 0:
                    a = attention_loss(cfg.att_loss, s_out.attentions[m], t_out.attentions[g], mask, self.causal,
                                       heads)
                    att = a if att is None else att + a
                if w["hid"] > 0:
                    h = hidden_loss(cfg.hid_loss, self.project(s_out.hidden_states[m + 1], f"layer{m + 1}"),
                                    t_out.hidden_states[g + 1], mask)
                    hid = h if hid is None else hid + h
            zero = s_out.logits.sum() * 0.0
            if w["att"] > 0:
                terms["att"] = att if att is not None else zero
            if w["hid"] > 0:
                terms["hid"] = hid if hid is not None else zero
        if w["pred"] > 0:
            pmask = mask if s_out.logits.dim() == 3 else None
            terms["pred"] = soft_cross_entropy(s_out.logits, t_out.logits, cfg.temperature, pmask)
        if w["hard"] > 0:
            if labels is None:
                raise CompressionError("hard_label_weight > 0 needs batches with labels (a labelled task or an "
                                       "MLM/LM batch); set hard_label_weight=0 for unlabelled text")
            logits = s_out.logits.float()
            terms["hard"] = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)
        return terms, s_out

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        w = self.w
        labels = batch.get("labels")
        terms, s_out = self.terms(model, batch)
        loss = sum(w[k] * v for k, v in terms.items())
        metrics = {f"loss_{k}": v.detach() for k, v in terms.items()}
        if labels is not None and s_out.logits.dim() == 2:
            metrics["accuracy"] = (s_out.logits.argmax(-1) == labels).float().mean()
        return loss, metrics


def term_gradient_norms(loss_fn: DistillLoss, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """The L2 norm, over the student's trainable parameters, of the gradient of EACH unweighted term of
    ``loss_fn`` on ``batch`` separately ({emb, att, hid, pred, hard} — the terms with a positive weight).

    Uses :func:`torch.autograd.grad`, so no ``.grad`` is written or changed (on the student, the projections or
    the teacher). The projections W_e/W_h are not student parameters and are left out; a parameter a term
    does not reach contributes 0. This is the measurement that justifies per-term weights: with
    total = Σ weight·term, weight_k·norm_k is the size of term k's pull on the student. The student runs in
    its current mode (call ``model.eval()`` first for a measurement without dropout noise)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise CompressionError("the student has no trainable parameters; term gradient norms are undefined")
    with torch.enable_grad():
        terms, _ = loss_fn.terms(model, batch)
        names = list(terms)
        out: dict[str, float] = {}
        for i, name in enumerate(names):
            if not terms[name].requires_grad:  # a term no student parameter reaches (e.g. every block unmapped)
                out[name] = 0.0
                continue
            grads = torch.autograd.grad(terms[name], params, retain_graph=i < len(names) - 1, allow_unused=True)
            sq = sum((g.float() ** 2).sum() for g in grads if g is not None)
            out[name] = float(torch.as_tensor(sq).sqrt())
    return out


# ---------------------------------------------------------------------------------------------- flops
def distill_flops_per_token(student_cfg, teacher_cfg, seq_len: int, n_projections: int = 0) -> float:
    """Training FLOPs per token of a distillation step on the one ruler (train/flops.py): the student's
    training cost + the teacher's forward cost + 6·d_S·d_T per projected layer (a matmul weight)."""
    from ..train import flops

    proj = 6.0 * student_cfg.d_model * teacher_cfg.d_model * n_projections
    return (flops.training_flops_per_token(student_cfg, seq_len) + flops.forward_flops_per_token(teacher_cfg, seq_len)
            + proj)
