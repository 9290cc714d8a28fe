"""Students initialised from a teacher's layers, and the LightMBERT recipe.

``init_from_teacher`` builds a student of the teacher's width whose block m is a copy of teacher block g(m)
(1-based, the same layer-map convention as :mod:`morphlm.compress.distill`), with the teacher's embeddings,
final norm and — where shapes fit — its head. DistilBERT initialises from teacher layers this way
(refs/compression.md §7); students narrower than the teacher need width extraction first (ETD,
``morphlm extract``).

LightMBERT (Jiao et al. 2021, arXiv 2103.06418; refs/compression.md §3) distils multilingual BERT into a
small student that keeps cross-lingual transfer: the student takes mBERT's **bottom** layers, the
multilingual embedding layer is **copied and frozen** (it carries the cross-lingual alignment and about half
of mBERT's parameters), and TinyBERT-style attention + hidden-state losses are applied on unlabelled
multilingual text. Only the abstract and a third-party model card were available: the loss layer mapping
(we use TinyBERT's uniform map), the absence of an embedding loss (the embeddings are identical and frozen,
so it is constant) and the choice of no projection at equal width are reconstructions.
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn

from ..model import ModelConfig, TransformerLM
from .distill import DistillConfig, freeze_embeddings, named_layer_map, resolve_layer_map
from .errors import CompressionError

__all__ = ["init_from_teacher", "lightmbert_student", "lightmbert_config", "BODY_FIELDS"]

# fields that must agree for a block or an embedding to be copied unchanged
BODY_FIELDS = ("d_model", "n_heads", "n_kv_heads", "d_ff", "activation", "norm", "norm_placement", "position",
               "bias", "embed_norm", "n_segments", "vocab_size")

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.*)$")


def init_from_teacher(teacher: nn.Module, student_cfg: ModelConfig, layer_map: str | Sequence[int] = "uniform",
                      *, seed: int = 0) -> TransformerLM:
    """A new student (``student_cfg``) whose block m copies teacher block ``layer_map[m-1]`` (1-based; a
    named map uniform|top|bottom works too), plus the teacher's embeddings, final norm and head weights
    whose names and shapes fit. Parameters that do not fit (a new classifier head) keep a fresh
    initialisation drawn with ``seed``."""
    tcfg: ModelConfig = teacher.config
    diff = {f: (getattr(tcfg, f), getattr(student_cfg, f)) for f in BODY_FIELDS
            if getattr(tcfg, f) != getattr(student_cfg, f)}
    if diff:
        raise CompressionError(
            f"cannot copy teacher layers into this student: {', '.join(f'{k} teacher {a} vs student {b}' for k, (a, b) in diff.items())}. "
            f"Use a student of the teacher's width (e.g. --student with only n_layers changed), --init random, "
            f"or extract a narrower student first (morphlm extract)")
    lm = resolve_layer_map(layer_map, student_cfg.n_layers, tcfg.n_layers)
    if 0 in lm:
        raise CompressionError(f"layer map {lm} has a 0 entry: every student block needs a teacher block to copy")
    torch.manual_seed(seed)
    student = TransformerLM(student_cfg)
    t_state = teacher.state_dict()
    s_state = student.state_dict()
    new_state = {}
    for key, value in s_state.items():
        m = _BLOCK.match(key)
        src = f"blocks.{lm[int(m.group(1))] - 1}.{m.group(2)}" if m else key
        tv = t_state.get(src)
        if tv is None:
            continue
        if tv.shape == value.shape:
            new_state[key] = tv.detach().clone()
        elif key == "pos_emb.weight" and tv.shape[1] == value.shape[1] and tv.shape[0] >= value.shape[0]:
            new_state[key] = tv[: value.shape[0]].detach().clone()  # shorter max_seq_len: the first positions
    missing_body = [k for k in s_state if (k.startswith(("blocks.", "tok_emb")) and k not in new_state)]
    if missing_body:
        raise CompressionError(f"teacher weights do not cover the student body ({missing_body[:3]} ...); the "
                               f"teacher does not follow the native model layout")
    student.load_state_dict(new_state, strict=False)
    return student


def lightmbert_student(teacher: nn.Module, n_layers: int, *, head: str | None = None, n_classes: int | None = None,
                       seed: int = 0) -> TransformerLM:
    """LightMBERT initialisation: the teacher's config with ``n_layers`` blocks copied from its bottom
    blocks 1..n_layers, embeddings copied and frozen (``requires_grad=False``)."""
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
    student = init_from_teacher(teacher, student_cfg, named_layer_map("bottom", n_layers, tcfg.n_layers), seed=seed)
    freeze_embeddings(student)
    return student


def lightmbert_config(teacher_cfg: ModelConfig, student_cfg: ModelConfig, **overrides) -> DistillConfig:
    """The LightMBERT distillation settings: general (task-agnostic) stage, attention + hidden losses over the
    uniform map, no embedding loss, frozen embeddings, no projection at equal width."""
    base = dict(stage="general", layer_map="uniform", emb_weight=0.0, freeze_embeddings=True,
                projection="none" if teacher_cfg.d_model == student_cfg.d_model else "shared")
    base.update(overrides)
    return DistillConfig(**base)
