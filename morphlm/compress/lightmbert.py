"""Students initialised from a teacher's layers, and the LightMBERT recipe.

``init_from_teacher`` builds a student of the teacher's width whose block m is a copy of teacher block g(m)
(a :class:`morphlm.surgery.LayerMap`: 0-based, the convention of every verb), with the teacher's embeddings,
final norm and — where shapes fit — its head. It is extraction with every width unit kept
(:func:`morphlm.compress.extract.extract` with ``method="leading"``) followed by a transplant into the student's
config (which may have another head). DistilBERT initialises from teacher layers this way (Sanh et al. 2019,
arXiv 1910.01108, §3); students narrower than the teacher need width extraction first (ETD, ``morphlm extract``).

LightMBERT (Jiao et al. 2021, arXiv 2103.06418) distils multilingual BERT into a
small student that keeps cross-lingual transfer: the student takes mBERT's **bottom** layers, the
multilingual embedding layer is **copied and frozen** (it carries the cross-lingual alignment and about half
of mBERT's parameters), and TinyBERT-style attention + hidden-state losses are applied on unlabelled
multilingual text. Only the abstract and a third-party model card were available: the loss layer mapping
(we use TinyBERT's uniform map), the absence of an embedding loss (the embeddings are identical and frozen,
so it is constant) and the choice of no projection at equal width are reconstructions.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..model import ModelConfig, TransformerLM
from .distill_loss import DistillConfig, teacher_layer_map
from .errors import CompressionError
from .extract import extract

__all__ = ["init_from_teacher", "lightmbert_student", "lightmbert_config", "freeze_embeddings", "BODY_FIELDS"]

# fields that must agree for a block or an embedding to be copied unchanged
BODY_FIELDS = ("d_model", "n_heads", "n_kv_heads", "d_ff", "activation", "norm", "norm_placement", "position",
               "bias", "embed_norm", "n_segments", "vocab_size")


def init_from_teacher(teacher: nn.Module, student_cfg: ModelConfig, layer_map: str | Sequence[int] = "uniform",
                      *, seed: int = 0) -> TransformerLM:
    """A new student (``student_cfg``) whose block m copies teacher block ``layer_map[m]`` (0-based; a named
    map uniform|top|bottom works too), plus the teacher's embeddings, final norm and head weights whose names
    and shapes fit. Parameters that do not fit (a new classifier head) keep a fresh initialisation drawn with
    ``seed`` (``torch.manual_seed(seed)``, as before the copy).

    The copy is extraction: ``extract(teacher, body, method="leading", layers=layer_map)`` with ``body`` = the
    teacher's config at the student's depth and sequence length (every width unit kept, so every copied tensor
    is the teacher's own), then the entries that fit ``student_cfg`` are loaded."""
    tcfg: ModelConfig = teacher.config
    diff = {f: (getattr(tcfg, f), getattr(student_cfg, f)) for f in BODY_FIELDS
            if getattr(tcfg, f) != getattr(student_cfg, f)}
    if diff:
        raise CompressionError(
            f"cannot copy teacher layers into this student: {', '.join(f'{k} teacher {a} vs student {b}' for k, (a, b) in diff.items())}. "
            f"Use a student of the teacher's width (e.g. --to teacher with only --n-layers changed), --init random, "
            f"or extract a narrower student first (morphlm extract)")
    lm = teacher_layer_map(layer_map, tcfg.n_layers, student_cfg.n_layers)
    if lm.has_gaps:
        raise CompressionError(f"layer map {lm.to_string()} leaves student blocks without a teacher block: every "
                               f"student block needs a teacher block to copy")
    if student_cfg.n_layers > tcfg.n_layers:
        raise CompressionError(f"the student has {student_cfg.n_layers} blocks but the teacher only {tcfg.n_layers}; "
                               f"copying teacher blocks builds a student no deeper than the teacher (use --init "
                               f"random for a deeper one)")
    body_cfg = tcfg.replace(n_layers=student_cfg.n_layers,
                            max_seq_len=min(student_cfg.max_seq_len, tcfg.max_seq_len))
    body = extract(teacher, body_cfg, method="leading", layers=lm, seed=seed).model.state_dict()
    torch.manual_seed(seed)
    student = TransformerLM(student_cfg)
    s_state = student.state_dict()
    fitting = {k: v.to("cpu") for k, v in body.items() if k in s_state and s_state[k].shape == v.shape}
    student.load_state_dict(fitting, strict=False)
    return student


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


def lightmbert_student(teacher: nn.Module, n_layers: int, *, head: str | None = None, n_classes: int | None = None,
                       seed: int = 0) -> TransformerLM:
    """LightMBERT initialisation: the teacher's config with ``n_layers`` blocks copied from its bottom
    blocks 0..n_layers-1, embeddings copied and frozen (``requires_grad=False``)."""
    tcfg: ModelConfig = teacher.config
    if not 1 <= n_layers <= tcfg.n_layers:
        raise CompressionError(f"a LightMBERT student needs 1..{tcfg.n_layers} layers (the teacher's depth), "
                               f"got {n_layers}")
    changes = {"n_layers": n_layers, "name": f"{tcfg.name}-lightmbert{n_layers}"}
    if head is not None:
        changes["head"] = head
    if n_classes is not None:
        changes["n_classes"] = n_classes
    student_cfg = tcfg.replace(**changes)
    student = init_from_teacher(teacher, student_cfg, "bottom", seed=seed)
    freeze_embeddings(student)
    return student


def lightmbert_config(teacher_cfg: ModelConfig, student_cfg: ModelConfig, **overrides) -> DistillConfig:
    """The LightMBERT distillation settings: general (task-agnostic) stage, attention + hidden losses over the
    uniform map, no embedding loss, frozen embeddings, no projection at equal width."""
    base = dict(stage="general", layer_map="uniform", emb_weight=0.0, freeze_embeddings=True,
                projection="none" if teacher_cfg.d_model == student_cfg.d_model else "shared")
    base.update(overrides)
    return DistillConfig(**base)
