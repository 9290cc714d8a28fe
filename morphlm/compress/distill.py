"""TinyBERT-style knowledge distillation as a loss function for the one training loop.

TinyBERT (Jiao et al. 2020, arXiv 1909.10351, §3.1 eq. 7-11; refs/compression.md §1) distils a teacher of
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
  are **summed** (as in TinyBERT's code). Heads: equal head counts are matched one to one (the 1/h Σ_i of
  eq. 9 is the mean over heads); if the teacher has k·h_S heads, each student head is matched to the mean
  of k consecutive teacher heads; otherwise both sides are averaged over all heads (a reconstruction —
  TinyBERT assumes equal head counts).
* Prediction: ``L_pred = t² · mean_rows Σ_c −p_T(c)·log p_S(c)`` with p = softmax(z/t). Rows are
  examples (classification logits (B, C)) or valid token positions (LM logits (B, T, V)). The t² factor
  (Hinton et al. 2015) keeps gradient magnitudes independent of t; at t = 1 this is exactly the paper's
  eq. 11 averaged over the batch. TinyBERT's code averages over classes as well (our value / C), and
  TextBrewer omits t²; DistilBERT uses t²·KL (= ours minus the teacher's entropy, same gradient).
* Hard labels (``hard_label_weight``): plain cross entropy of the student on the gold labels, mean over
  labelled rows.
* Total = Σ weight · term; the metrics report every term before weighting.

Stages (``DistillConfig.stage``)
--------------------------------
``general`` (task-agnostic, on unlabelled text: emb + att + hid), ``intermediate`` (task stage a, same
losses on task data), ``prediction`` (task stage b: soft CE only), ``logit`` (plain Hinton logit
distillation: soft CE + hard-label CE, the KD baseline), ``full`` (emb + att + hid + pred in one loss,
TernaryBERT's distillation-aware training).

Layer maps (``DistillConfig.layer_map``): a list with one teacher block per student block (1-based teacher
blocks, i.e. indices into ``hidden_states``; 0 = this student block gets no intermediate supervision), or
``uniform`` (g(m) = ⌊m·N/M⌋, TinyBERT's g(m) = 3m for 4 of 12), ``top`` (the last M teacher blocks) or
``bottom`` (the first M). The embedding loss always maps student embeddings to teacher embeddings.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CompressionError, StrictConfig

log = logging.getLogger("morphlm.compress.distill")

__all__ = [
    "STAGES", "DistillConfig", "DistillLoss", "distill", "uniform_layer_map", "named_layer_map",
    "resolve_layer_map", "attention_mse", "hidden_mse", "soft_cross_entropy", "distill_flops_per_token",
    "freeze_embeddings", "load_projections", "check_compatible",
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


# ---------------------------------------------------------------------------------------------- layer maps
def uniform_layer_map(n_student: int, n_teacher: int) -> list[int]:
    """TinyBERT's uniform strategy g(m) = ⌊m·N/M⌋ (1-based teacher blocks; 3m for 4 of 12). With more
    student than teacher blocks the map repeats teacher blocks (never 0)."""
    _check_counts(n_student, n_teacher)
    return [max(1, m * n_teacher // n_student) for m in range(1, n_student + 1)]


def named_layer_map(name: str, n_student: int, n_teacher: int) -> list[int]:
    """``uniform`` | ``top`` (teacher blocks N-M+1..N) | ``bottom`` (1..M)."""
    _check_counts(n_student, n_teacher)
    if name == "uniform":
        return uniform_layer_map(n_student, n_teacher)
    if name in ("top", "bottom"):
        if n_student > n_teacher:
            raise CompressionError(f"layer map {name!r} needs a student no deeper than the teacher "
                                   f"({n_student} > {n_teacher} blocks); use 'uniform' or an explicit list")
        if name == "top":
            return list(range(n_teacher - n_student + 1, n_teacher + 1))
        return list(range(1, n_student + 1))
    raise CompressionError(f"unknown layer map {name!r}; use uniform, top, bottom or a comma-separated list "
                           f"of teacher blocks such as 2,4,6")


def _check_counts(n_student: int, n_teacher: int) -> None:
    if n_student < 1 or n_teacher < 1:
        raise CompressionError(f"layer maps need at least one block on each side (student {n_student}, "
                               f"teacher {n_teacher})")


def is_monotone(layer_map: Sequence[int]) -> bool:
    """Non-decreasing over the supervised (non-zero) entries."""
    used = [g for g in layer_map if g != 0]
    return all(a <= b for a, b in zip(used, used[1:]))


def resolve_layer_map(spec: str | Sequence[int], n_student: int, n_teacher: int, *,
                      monotone: bool = False) -> list[int]:
    """A named map, a list, or a string ``"2,4,6"`` → a validated list of length ``n_student`` with
    entries in 0..n_teacher (0 = unsupervised student block)."""
    if isinstance(spec, str):
        text = spec.strip()
        if not text or not (text[0].isdigit() or text[0] in "+-"):
            return named_layer_map(text, n_student, n_teacher)
        try:
            spec = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise CompressionError(f"layer map {spec!r}: use uniform, top, bottom or comma-separated teacher "
                                   f"block numbers such as 2,4,6") from None
    layers = [int(x) for x in spec]
    if len(layers) != n_student:
        raise CompressionError(f"layer map {layers} has {len(layers)} entries but the student has {n_student} "
                               f"blocks; give one teacher block per student block")
    bad = [g for g in layers if not 0 <= g <= n_teacher]
    if bad:
        raise CompressionError(f"layer map {layers} names teacher blocks {bad} out of range; the teacher has "
                               f"blocks 1..{n_teacher} (0 = no supervision for that student block)")
    if monotone and not is_monotone(layers):
        raise CompressionError(f"layer map {layers} is not monotone (a deeper student block is mapped to a "
                               f"shallower teacher block); reorder it or allow free mappings")
    return layers


# ---------------------------------------------------------------------------------------------- config
@dataclass
class DistillConfig(StrictConfig):
    """What to distil and how. ``None`` weights take the stage's defaults (1 for its terms, else 0)."""

    stage: str = "general"
    layer_map: str | list[int] = "uniform"
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

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise CompressionError(f"unknown distillation stage {self.stage!r}; choose one of {STAGES}")
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise CompressionError(f"temperature={self.temperature!r} must be > 0 (1 = TinyBERT, 2-4 for "
                                   f"Hinton-style logit distillation)")
        if self.projection not in PROJECTIONS:
            raise CompressionError(f"projection={self.projection!r}; choose one of {PROJECTIONS}")
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


def attention_mse(s: torch.Tensor, t: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  causal: bool = False) -> torch.Tensor:
    """MSE of pre-softmax attention scores, mean over valid (batch, head, query, key) entries.

    s: (B, Hs, T, T); t: (B, Ht, T, T). Head counts: equal → one to one; Ht = k·Hs → each student head
    against the mean of k consecutive teacher heads; otherwise both averaged over heads (reconstruction)."""
    B, Hs, T, _ = s.shape
    Ht = t.shape[1]
    t = t.to(s.dtype)
    if Ht != Hs:
        if Ht % Hs == 0:
            t = t.view(B, Hs, Ht // Hs, T, T).mean(dim=2)  # (B, Hs, T, T)
        else:
            s, t = s.mean(dim=1, keepdim=True), t.mean(dim=1, keepdim=True)  # (B, 1, T, T)
    valid = _valid_tokens(attention_mask, B, T, s.device)
    pair = valid[:, :, None] & valid[:, None, :]  # (B, T, T) query i valid & key j valid
    if causal:
        pair = pair & torch.ones(T, T, dtype=torch.bool, device=s.device).tril()
    pair = pair[:, None].expand_as(s)  # (B, H, T, T)
    diff = (s - t).masked_select(pair)
    return (diff * diff).mean() if diff.numel() else s.sum() * 0.0


def hidden_mse(s: torch.Tensor, t: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE of (already projected) hidden states (B, T, D), mean over valid tokens × D."""
    B, T, D = t.shape
    valid = _valid_tokens(attention_mask, B, T, s.device)  # (B, T)
    diff = (s - t.to(s.dtype))[valid]  # (n_valid, D)
    return (diff * diff).mean() if diff.numel() else s.sum() * 0.0


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
        self.layer_map = resolve_layer_map(cfg.layer_map, student_config.n_layers, tcfg.n_layers,
                                           monotone=cfg.monotone)
        self.causal = bool(getattr(tcfg, "causal", False) or getattr(student_config, "causal", False))
        self.needs_hidden = self.w["emb"] > 0 or self.w["hid"] > 0
        self.needs_att = self.w["att"] > 0
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
                    for m, g in enumerate(self.layer_map, start=1):
                        if g:
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

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        w = self.w
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        mask = batch.get("attention_mask")
        labels = batch.get("labels")
        s_out = model(**inputs, output_hidden_states=self.needs_hidden, output_attentions=self.needs_att)
        t_out = self._teacher_forward(inputs)
        terms: dict[str, torch.Tensor] = {}
        if w["emb"] > 0:
            terms["emb"] = hidden_mse(self.project(s_out.hidden_states[0], "emb"), t_out.hidden_states[0], mask)
        if w["att"] > 0 or w["hid"] > 0:
            att = hid = None
            for m, g in enumerate(self.layer_map, start=1):
                if g == 0:
                    continue
                if w["att"] > 0:
                    a = attention_mse(s_out.attentions[m - 1], t_out.attentions[g - 1], mask, self.causal)
                    att = a if att is None else att + a
                if w["hid"] > 0:
                    h = hidden_mse(self.project(s_out.hidden_states[m], f"layer{m}"), t_out.hidden_states[g], mask)
                    hid = h if hid is None else hid + h
            zero = s_out.logits.sum() * 0.0
            if w["att"] > 0:
                terms["att"] = att if att is not None else zero
            if w["hid"] > 0:
                terms["hid"] = hid if hid is not None else zero
        if w["pred"] > 0:
            pmask = mask if s_out.logits.dim() == 3 else None
            terms["pred"] = soft_cross_entropy(s_out.logits, t_out.logits, self.cfg.temperature, pmask)
        if w["hard"] > 0:
            if labels is None:
                raise CompressionError("hard_label_weight > 0 needs batches with labels (a labelled task or an "
                                       "MLM/LM batch); set hard_label_weight=0 for unlabelled text")
            logits = s_out.logits.float()
            terms["hard"] = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)
        loss = sum(w[k] * v for k, v in terms.items())
        metrics = {f"loss_{k}": v.detach() for k, v in terms.items()}
        if labels is not None and s_out.logits.dim() == 2:
            metrics["accuracy"] = (s_out.logits.argmax(-1) == labels).float().mean()
        return loss, metrics


# ---------------------------------------------------------------------------------------------- helpers
def distill_flops_per_token(student_cfg, teacher_cfg, seq_len: int, n_projections: int = 0) -> float:
    """Training FLOPs per token of a distillation step on the one ruler (train/flops.py): the student's
    training cost + the teacher's forward cost + 6·d_S·d_T per projected layer (a matmul weight)."""
    from ..train import flops

    proj = 6.0 * student_cfg.d_model * teacher_cfg.d_model * n_projections
    return (flops.training_flops_per_token(student_cfg, seq_len) + flops.forward_flops_per_token(teacher_cfg, seq_len)
            + proj)


def freeze_embeddings(model: nn.Module) -> list[str]:
    """LightMBERT: switch off training of the embedding layer (token, position, segment embeddings and the
    embedding LayerNorm). A tied output matrix is the token embedding, so it is frozen as well."""
    names = []
    for attr in ("tok_emb", "pos_emb", "seg_emb", "emb_norm"):
        mod = getattr(model, attr, None)
        if mod is not None:
            for pname, p in mod.named_parameters():
                p.requires_grad_(False)
                names.append(f"{attr}.{pname}")
    return names


def load_projections(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """The trained projection weights of a distillation run (stored by fit in state/optimizer.safetensors
    under ``aux.param::``), keyed like ``DistillLoss.state_dict()``."""
    from ..train import checkpoint as ckpt

    _, tensors = ckpt.load_trainer_state(run_dir)
    out = {k.split("::", 1)[1]: v for k, v in tensors.items() if k.startswith("aux.param::")}
    if not out:
        raise CompressionError(f"{run_dir} holds no distillation projections (it was not trained by distill() "
                               f"with intermediate losses)")
    return out


def distill(teacher: nn.Module, student: nn.Module, data, args, cfg: DistillConfig | None = None, *,
            callbacks: Iterable[Any] = (), tokenizer_json: str | None = None, lineage: dict[str, Any] | None = None,
            extra_state: dict[str, Any] | None = None):
    """Distil ``teacher`` into ``student`` with fit(): the loss is :class:`DistillLoss`, its projections are
    trained by fit's optimizer and saved in the run's state; FLOPs per step = student training + teacher
    forward (+ projections). Returns fit's :class:`FitResult`; ``args.out_dir`` becomes a normal checkpoint
    directory of the student whose lineage names the teacher."""
    from ..train.loop import fit

    cfg = cfg or DistillConfig()
    loss_fn = DistillLoss(teacher, student.config, cfg)
    teacher.eval()
    teacher.requires_grad_(False)
    if cfg.freeze_embeddings:
        frozen = freeze_embeddings(student)
        log.info("frozen student embedding parameters: %s", ", ".join(frozen))
    B, T = (int(n) for n in data.train_batch(0)["input_ids"].shape)
    n_proj = sum(1 for _ in loss_fn.proj) if cfg.projection != "shared" else (
        (1 if loss_fn.w["emb"] > 0 else 0) + (sum(1 for g in loss_fn.layer_map if g) if loss_fn.w["hid"] > 0 else 0))
    fps = distill_flops_per_token(student.config, loss_fn.teacher_config, T, n_proj) * B * T
    args = dataclasses.replace(args, flops_per_step=args.flops_per_step or fps)
    lin = {"verb": "distill", "distill": {**cfg.to_dict(), "resolved_layer_map": loss_fn.layer_map}}
    lin.update(lineage or {})
    aux = loss_fn if any(True for _ in loss_fn.parameters()) else None
    return fit(student, loss_fn, data, args, callbacks, tokenizer_json=tokenizer_json, lineage=lin,
               extra_state=extra_state, aux_modules=aux)


# ---------------------------------------------------------------------------------------------- checkpoint-level verb
def load_teacher(path: str | Path):
    """(model in eval mode, Tokenizer, lineage record) of a morphlm checkpoint or a Hugging Face directory
    (imported through morphlm.interop)."""
    from ..interop.convert import is_hf_dir
    from ..train import checkpoint as ckpt

    path = Path(path)
    if not path.exists():
        raise CompressionError(f"teacher {path} does not exist; pass a morphlm checkpoint directory or a Hugging "
                               f"Face model directory")
    need = "distillation feeds teacher and student the same token ids, so the teacher's tokenizer is required"
    if not is_hf_dir(path):
        model, tokenizer, rec = ckpt.open_checkpoint(path, role="teacher", error=CompressionError,
                                                     need_tokenizer=need)
        return model.eval(), tokenizer, rec.parent("teacher")
    from ..interop.hf import load_hf_model

    tokenizer = ckpt.open_tokenizer(path, need, error=CompressionError)
    model, _ = load_hf_model(path)
    weights = path / "model.safetensors"
    record = {"path": str(path.resolve()), "role": "teacher", "format": "huggingface", "flops": 0.0,
              "sha256": ckpt.sha256_file(weights) if weights.exists() else None}
    model.eval()
    return model, tokenizer, record


def _student_config(student: str, teacher_cfg, overrides: dict[str, Any]):
    from ..model import ModelConfig
    from ..model.config import PRESETS

    p = Path(student)
    if student in PRESETS:
        base = ModelConfig.from_name(student).to_dict()
    elif p.is_dir():
        from ..train import checkpoint as ckpt

        base = ckpt.read_config(p)[0].to_dict()
    elif p.suffix in (".json", ".yaml", ".yml"):
        if not p.exists():
            raise CompressionError(f"student config {p} does not exist")
        base = ModelConfig.from_file(p).to_dict()
    elif student == "teacher":
        base = teacher_cfg.to_dict()
    else:
        raise CompressionError(f"--student {student!r} is neither a preset ({', '.join(sorted(PRESETS))}), a config "
                               f"file, a checkpoint directory nor 'teacher'")
    if "vocab_size" not in overrides and base.get("vocab_size") != teacher_cfg.vocab_size:
        base["vocab_size"] = teacher_cfg.vocab_size  # one tokenizer for both: the teacher's
    if "max_seq_len" not in overrides:
        base["max_seq_len"] = min(base.get("max_seq_len", teacher_cfg.max_seq_len), teacher_cfg.max_seq_len)
    # derived fields follow a changed shape unless they were set explicitly (or differ from the rule)
    if "n_heads" in overrides and "n_kv_heads" not in overrides and base.get("n_kv_heads") == base.get("n_heads"):
        base["n_kv_heads"] = None
    if "d_model" in overrides and "d_ff" not in overrides and base.get("activation") != "swiglu" \
            and base.get("d_ff") == 4 * base.get("d_model", 0):
        base["d_ff"] = None
    base.update(overrides)
    return base


def distill_run(teacher: str | Path, student: str, out: str | Path, *, init: str = "auto", stage: str = "general",
                corpus: str | None = None, task_train: str | None = None, task_val: str | None = None,
                augment: int = 0, augment_model: str | None = None, augment_k: int = 15, augment_p: float = 0.4,
                layer_map: str = "uniform", temperature: float = 1.0, hard_label_weight: float | None = None,
                projection: str = "shared", max_steps: int = 200, pred_steps: int | None = None,
                batch_size: int = 16, seq_len: int = 128, lr: float = 5e-4, pred_lr: float | None = None,
                warmup_steps: int = 10, eval_every: int = 0, save_every: int = 0, seed: int = 0,
                resume: str = "never", device: str = "auto", max_bytes: int | None = 4_000_000,
                student_overrides: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """``morphlm distill``: teacher dir + student (preset | config | dir | 'teacher' + overrides) → checkpoint dir.

    ``stage``: general | intermediate | prediction | logit | full | task (= intermediate into OUT/stage_a,
    then prediction into OUT). ``init``: auto (a student dir's own weights, else random) | random |
    teacher-layers (copy the teacher blocks named by the layer map) | lightmbert (bottom blocks, frozen
    embeddings). Data: ``corpus`` (unlabelled text, general stage) or ``task_train``/``task_val`` (labelled,
    task stages; ``augment`` = N_a TinyBERT variants per training example)."""
    import torch as _torch

    from ..data import ClassificationBatches, LMBatches, MLMBatches, load_task, prepare_lm_store
    from ..model import ModelConfig, TransformerLM
    from ..train import checkpoint as ckpt
    from ..train.optim import TrainArgs
    from .lightmbert import init_from_teacher, lightmbert_student

    stages = ["intermediate", "prediction"] if stage == "task" else [stage]
    if stage != "task" and stage not in STAGES:
        raise CompressionError(f"unknown --stage {stage!r}; choose general, intermediate, prediction, task, logit or full")
    if init not in ("auto", "random", "teacher-layers", "lightmbert"):
        raise CompressionError(f"unknown --init {init!r}; choose auto, random, teacher-layers or lightmbert")
    out = Path(out)
    t_model, tok, t_record = load_teacher(teacher)
    tcfg = t_model.config
    if tok.vocab_size > tcfg.vocab_size:
        raise CompressionError(f"teacher tokenizer has {tok.vocab_size} tokens but the teacher's vocab_size is "
                               f"{tcfg.vocab_size}; the teacher directory is inconsistent")

    # ---- data ------------------------------------------------------------------------------------------
    if corpus is not None and task_train is not None:
        raise CompressionError("give either --corpus (unlabelled text) or --task-train/--task-val, not both")
    if stage == "general" and corpus is None:
        raise CompressionError("general distillation runs on unlabelled text: pass --corpus (a name, file or glob)")
    is_task = task_train is not None or task_val is not None
    if is_task and not (task_train and task_val):
        raise CompressionError("task distillation needs both --task-train and --task-val")
    if not is_task and corpus is None:
        raise CompressionError(f"stage {stage!r} needs data: --corpus for text, or --task-train/--task-val")
    for f in (task_train, task_val):
        if f is not None and not Path(f).exists():
            raise CompressionError(f"task file {f} does not exist; pass TSV/CSV/JSONL files with a label column")
    seq_len = min(seq_len, tcfg.max_seq_len)
    data_spec: dict[str, Any] = {"seq_len": seq_len, "batch_size": batch_size, "max_bytes": max_bytes}
    if is_task:
        task = load_task(task_train, task_val)
        train_examples = task.train
        n_aug_made = 0
        if augment > 0:
            from .augment import AugmentConfig, augment_examples

            aug_model = t_model
            if augment_model is not None:
                aug_model = ckpt.load_model(augment_model)
            train_examples = augment_examples(task.train, tok, aug_model,
                                              AugmentConfig(n_aug=augment, top_k=augment_k, p_replace=augment_p,
                                                            seed=seed), progress=progress)
            n_aug_made = len(train_examples) - len(task.train)
        data = ClassificationBatches(train_examples, task.val, tok, batch_size, seq_len, seed=seed)
        data_spec.update(task_train=str(Path(task_train).resolve()), task_val=str(Path(task_val).resolve()))
        fps = {"data_fingerprint": f"task:{Path(task_train).name}:{len(task.train)}:aug{augment}:{n_aug_made}",
               "tokenizer_fingerprint": tok.fingerprint()}
        head, n_classes = "cls", task.n_classes
    else:
        _, store = prepare_lm_store(corpus, tcfg.vocab_size, tokenizer=tok, max_bytes=max_bytes,
                                    show_progress=progress)
        head, n_classes = tcfg.head, tcfg.n_classes
        if head == "mlm":
            data = MLMBatches(store, batch_size, seq_len, mask_id=tok.mask_id, vocab_size=tok.vocab_size, seed=seed)
        else:
            data = LMBatches(store, batch_size, seq_len, seed=seed)
        data_spec["corpus"] = corpus
        fps = {"data_fingerprint": store.meta.get("corpus_fingerprint"), "tokenizer_fingerprint": tok.fingerprint()}
        if tcfg.head == "cls":
            raise CompressionError("this teacher is a classifier: distil it on its task (--task-train/--task-val); "
                                   "general distillation needs a pretrained (lm/mlm) teacher")

    # ---- student ---------------------------------------------------------------------------------------
    overrides = dict(student_overrides or {})
    parents = []
    s_dir = Path(student)
    from_dir = s_dir.is_dir() and ckpt.has_checkpoint(s_dir)
    if s_dir.is_dir() and not from_dir:
        raise CompressionError(f"--student {student} is a directory but not a morphlm checkpoint (config.json + "
                               f"model.safetensors missing)")
    s_fields = _student_config(student, tcfg, overrides)
    s_fields.update(head=head, n_classes=n_classes if head == "cls" else s_fields.get("n_classes", 2))
    if init == "lightmbert":
        n_layers = int(s_fields.get("n_layers", tcfg.n_layers))
        s_model = lightmbert_student(t_model, n_layers, head=head, n_classes=s_fields["n_classes"], seed=seed)
    else:
        s_cfg = ModelConfig.from_dict(s_fields)
        if init == "teacher-layers":
            init_map = layer_map if "0" not in str(layer_map).split(",") else "uniform"
            s_model = init_from_teacher(t_model, s_cfg, init_map, seed=seed)
        else:
            _torch.manual_seed(seed)
            s_model = TransformerLM(s_cfg)
            if from_dir and init == "auto":
                state, _ = ckpt.load_state_dict(s_dir)
                own = s_model.state_dict()
                fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
                missing = [k for k in own if k.startswith(("blocks.", "tok_emb")) and k not in fitting]
                if missing:
                    raise CompressionError(f"--student {student}: its weights do not fit the student config "
                                           f"({missing[:3]} ...); drop the conflicting overrides")
                s_model.load_state_dict(fitting, strict=False)
                parents.append(ckpt.parent_record(s_dir, "student-init"))
    if init == "lightmbert" and stage != "task" and stage not in ("general", "intermediate", "full"):
        raise CompressionError("--init lightmbert uses TinyBERT-style intermediate losses: use --stage general, "
                               "intermediate, full or task")

    # ---- stages ----------------------------------------------------------------------------------------
    results = []
    stage_parents = [t_record, *parents]
    for i, st in enumerate(stages):
        last = i == len(stages) - 1
        st_out = out if last else out / "stage_a"
        if init == "lightmbert" and st != "prediction":
            from .lightmbert import lightmbert_config

            dcfg = lightmbert_config(tcfg, s_model.config, layer_map=layer_map, temperature=temperature,
                                     teacher_path=t_record["path"])
            dcfg.stage = st
        else:
            dcfg = DistillConfig(stage=st, layer_map=layer_map, temperature=temperature,
                                 hard_label_weight=hard_label_weight, projection=projection,
                                 freeze_embeddings=init == "lightmbert", teacher_path=t_record["path"])
        steps = max_steps if (st != "prediction" or pred_steps is None or len(stages) == 1) else pred_steps
        st_lr = lr if (st != "prediction" or pred_lr is None) else pred_lr
        args = TrainArgs(out_dir=str(st_out), max_steps=steps, lr=st_lr, warmup_steps=min(warmup_steps, steps - 1),
                         schedule="constant" if st == "intermediate" else "linear", min_lr_ratio=0.0,
                         weight_decay=0.01, eval_every=eval_every, save_every=save_every, seed=seed, resume=resume,
                         device=device, progress=progress)
        lineage = {"teacher": t_record["path"], "stage": st, "data": data_spec, "parents": stage_parents,
                   "student": student, "init": init}
        res = distill(t_model, s_model, data, args, dcfg, tokenizer_json=tok.to_json_str(), lineage=lineage,
                      extra_state={**fps, "data_spec": data_spec})
        results.append({"stage": st, "out_dir": str(st_out), "steps": res.steps, "flops": res.flops,
                        **{k: v for k, v in res.metrics.items() if k.startswith("val_")}})
        stage_parents = [ckpt.parent_record(st_out, "stage-a")]
    return {"out_dir": str(out), "teacher": t_record["path"], "stages": results,
            "teacher_params": sum(p.numel() for p in t_model.parameters()),
            "student_params": sum(p.numel() for p in s_model.parameters()),
            "total_flops": ckpt.total_flops(out)}
