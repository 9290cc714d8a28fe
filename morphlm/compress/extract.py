"""Extract-then-Distill (ETD; Chen et al., ICANN 2021, arXiv 2104.11928, §3).

A student is *extracted* from a teacher as the initialisation for distillation: width-wise extraction (a
subset of hidden dims, heads, head dims and FFN neurons) then uniform layer selection. Index code is shared
with the growth operators through :mod:`morphlm.surgery`: every student tensor is
``remap(teacher tensor, (IndexMap.select(...), ...))`` and the per-layer recipes are composed with the layer
map by :func:`~morphlm.surgery.compose_depth`.

What is selected (the architecture forces most of it):

* **hidden** — ONE index set S (|S| = d') for the whole residual stream: token/position/segment embedding
  columns, every LayerNorm/RMSNorm gain and bias, the input columns of q/k/v and fc1, the output rows of the
  attention projection and fc2, and the hidden axes of the heads (MLM transform, untied LM head, pooler,
  classifier input).
* **depth** — a :class:`~morphlm.surgery.LayerMap` (0-based teacher layer per student layer): by default
  ``uniform``, student layer m ← teacher layer ⌊(m+1)·N/M⌋ - 1 (TinyBERT's g(m) = m·N/M; always keeps the last
  layer); ``layers='bottom'|'top'`` or an explicit list (``"0,2,4"``) override it.
* **attention** — per kept layer: ``n_kv_heads'`` teacher kv heads, then ``n_heads'/n_kv_heads'`` query heads
  *inside each chosen kv group* (so every student query head still attends with its own kv head: GQA-consistent;
  plain MHA is the case n_kv_heads = n_heads), and, when the student's head_dim is smaller, ``head_dim'`` dims
  of each head ("head neurons"). One dim set per kv head is used for q (of the heads in its group), k, v and
  the matching input columns of the output projection. With RoPE the dims are kept in rotation pairs
  (t, t + Dh/2). Fused [q; k; v] rows are one concatenated map.
* **FFN** — ``d_ff'`` neurons per kept layer: rows of fc1 (SwiGLU: the same neurons in gate and up) and
  columns of fc2.

Methods: ``leading`` (the first units: AutoTinyBERT's leading slices, used by :mod:`morphlm.compress.nas`),
``rand`` (ETD-Rand: uniform random subsets from ``seed``) and ``impt`` (ETD-Impt: top-k by first-order
Taylor importance, :func:`importance_scores`). Kept units stay in the teacher's order.

Importance (a reconstruction: ETD's exact metric and its hidden-dim rule are unpublished; the same lab's
DynaBERT code scores heads by Σ_x |∂L/∂ξ_h| with ξ a head mask). For a unit u whose removal zeroes a group of
parameters G_u, the first-order Taylor estimate of the loss change is ΔL ≈ -Σ_{w∈G_u} w·∂L/∂w; the score is
its absolute value summed over batches, ``I_u = Σ_batches |Σ_{w∈G_u} w·∂L/∂w|``, with G_u =
  - FFN neuron j: column j of fc2 (exactly DynaBERT's mask ξ on the neuron output);
  - query head h: the output projection's input columns of head h (DynaBERT's head mask); a kv head scores the
    sum of its query heads' scores;
  - head dim t of kv head g: |Σ over k's row (g,t)| + |Σ over v's row (g,t)| (weights and bias), each term
    a mask on that dim of the keys / values, scored separately per batch;
  - hidden dim i: every parameter entry on dim i of the residual stream (all tensors listed under *hidden*).
The loss is the teacher's own (masked/causal LM or classification) on ``n_batches`` training batches.

What extraction preserves. Keep-all indices (student shape = teacher shape, ``leading`` or any method) copy
the teacher exactly: logits are bit-for-bit equal. Removing only FFN neurons whose fc2 columns are zero is exact
up to float32 summation order. (Heads cannot be dropped alone: morphlm ties the query width to d_model, so
fewer heads or smaller heads mean fewer hidden dims.) Anything else changes the function: a LayerNorm/RMSNorm
over a subset of dims computes new statistics; a smaller head_dim changes the 1/√d_head score scale (not compensated, as in AutoTinyBERT) and,
with RoPE, the rotation frequencies of the kept pairs; dropped layers remove their residual contributions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..surgery import (IndexMap, LayerMap, ParamMap, SurgeryPlan, apply_plan, check_same_family, compose_depth,
                       parse_layer_map)
from ..model.config import ModelConfig
from ..model.transformer import TransformerLM
from .errors import CompressionError

METHODS = ("rand", "impt", "leading")
SHRINKABLE = ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len")


# ---------------------------------------------------------------------------- checks
def check_extractable(teacher: ModelConfig, student: ModelConfig) -> None:
    """Raise CompressionError unless ``student`` is ``teacher`` with every size equal or smaller and
    attention heads that can be carved out of the teacher's."""
    check_same_family(teacher, student, CompressionError, ref_name="teacher", other_name="student",
                      verb="extraction")
    larger = [f"{k} {getattr(teacher, k)} → {getattr(student, k)}" for k in SHRINKABLE
              if getattr(student, k) > getattr(teacher, k)]
    if larger:
        raise CompressionError(f"the student is larger than the teacher in {', '.join(larger)}; extraction only "
                               f"selects existing units (to enlarge a model use `morphlm grow`)")
    if student.head_dim > teacher.head_dim:
        need = -(-student.d_model // teacher.head_dim)
        raise CompressionError(
            f"incompatible heads: the student's head_dim d_model/n_heads = {student.d_model}/{student.n_heads} = "
            f"{student.head_dim} exceeds the teacher's {teacher.head_dim}; a head can only keep a subset of a teacher "
            f"head's dims, so use n_heads >= {need} (and a divisor of d_model={student.d_model})")
    rep_t = teacher.n_heads // teacher.n_kv_heads
    rep_s = student.n_heads // student.n_kv_heads
    if rep_s > rep_t:
        raise CompressionError(
            f"incompatible heads: the student groups {rep_s} query heads per kv head but the teacher's kv groups hold "
            f"only {rep_t}; every student group must come from one teacher group, so use n_kv_heads >= "
            f"{-(-student.n_heads // rep_t)} for n_heads={student.n_heads}")


# ---------------------------------------------------------------------------- choices
@dataclass
class ExtractionChoice:
    """Which teacher units the student keeps (per-layer entries are keyed by *teacher* layer).

    ``head_dims[l][g]`` are the offsets (within a teacher head) kept for student kv head g of layer l; the
    student's query heads ``q_heads[l]`` are grouped: query head j belongs to kv head j // (n_heads'/n_kv_heads').
    """

    hidden: list[int]
    layers: list[int]
    kv_heads: dict[int, list[int]]
    q_heads: dict[int, list[int]]
    head_dims: dict[int, list[list[int]]]
    ffn: dict[int, list[int]]

    def to_dict(self) -> dict[str, Any]:
        per = ("kv_heads", "q_heads", "head_dims", "ffn")
        out: dict[str, Any] = {"hidden": list(self.hidden), "layers": list(self.layers)}
        out.update({k: {str(l): v for l, v in getattr(self, k).items()} for k in per})
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ExtractionChoice":
        per = ("kv_heads", "q_heads", "head_dims", "ffn")
        return cls(list(data["hidden"]), list(data["layers"]),
                   *({int(l): v for l, v in data[k].items()} for k in per))


def resolve_layers(spec: str | Sequence[int] | LayerMap | None, n_teacher: int, n_student: int) -> LayerMap:
    """'uniform' (default; ETD / TinyBERT's g(m) = m·N/M) | 'bottom' | 'top' | an explicit 0-based list /
    '0,2,4' → the :class:`~morphlm.surgery.LayerMap` of teacher layers (one per student layer)."""
    if n_student > n_teacher:
        raise CompressionError(f"cannot keep {n_student} of the teacher's {n_teacher} layers")
    return parse_layer_map(spec, n_teacher, n_student, names=("uniform", "bottom", "top"), default="uniform",
                           roles=("teacher", "student"), error=CompressionError)


def _pick(n: int, k: int, method: str, score: torch.Tensor | None, gen: torch.Generator) -> list[int]:
    """k of n units, in ascending order: the first k, a uniform random subset, or the k best scores
    (ties → lower index)."""
    if method == "leading":
        return list(range(k))
    if method == "rand":
        return sorted(torch.randperm(n, generator=gen)[:k].tolist())
    order = torch.argsort(-score.double(), stable=True)
    return sorted(order[:k].tolist())


def choose_units(teacher: ModelConfig, student: ModelConfig, method: str = "rand", *,
                 scores: Mapping[str, Any] | None = None, seed: int = 0,
                 layers: str | Sequence[int] | None = "uniform") -> ExtractionChoice:
    """The units to keep; deterministic in (configs, method, scores, seed). Draws in a fixed order."""
    if method not in METHODS:
        raise CompressionError(f"unknown extraction method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "impt" and scores is None:
        raise CompressionError("method 'impt' needs importance scores (importance_scores(teacher, data, n_batches))")
    check_extractable(teacher, student)
    gen = torch.Generator().manual_seed(seed)
    sc = scores or {}
    layer_map = resolve_layers(layers, teacher.n_layers, student.n_layers)
    hidden = _pick(teacher.d_model, student.d_model, method, sc.get("hidden"), gen)
    R, rep = teacher.n_heads // teacher.n_kv_heads, student.n_heads // student.n_kv_heads
    Dh, dh = teacher.head_dim, student.head_dim
    rope = teacher.position == "rope"
    kv_heads, q_heads, head_dims, ffn = {}, {}, {}, {}
    for l in dict.fromkeys(layer_map):  # distinct teacher layers, in student order
        kv = _pick(teacher.n_kv_heads, student.n_kv_heads, method, sc["kv_heads"][l] if sc else None, gen)
        q: list[int] = []
        for g in kv:
            group_scores = sc["heads"][l][g * R:(g + 1) * R] if sc else None
            q += [g * R + r for r in _pick(R, rep, method, group_scores, gen)]
        dims = []
        for g in kv:
            ds = sc["head_dims"][l][g] if sc else None
            if rope:  # keep rotation pairs (t, t + Dh/2) together
                pair_scores = ds[:Dh // 2] + ds[Dh // 2:] if ds is not None else None
                half = _pick(Dh // 2, dh // 2, method, pair_scores, gen)
                dims.append(half + [t + Dh // 2 for t in half])
            else:
                dims.append(_pick(Dh, dh, method, ds, gen))
        kv_heads[l], q_heads[l], head_dims[l] = kv, q, dims
        ffn[l] = _pick(teacher.d_ff, student.d_ff, method, sc["ffn"][l] if sc else None, gen)
    return ExtractionChoice(hidden, layer_map.to_list(), kv_heads, q_heads, head_dims, ffn)


# ---------------------------------------------------------------------------- plan
def _width_plan(teacher: ModelConfig, student: ModelConfig,
                choice: ExtractionChoice) -> tuple[dict[str, ParamMap], IndexMap]:
    """Recipes over the kept teacher layers (student widths), and the hidden map D (shared by every recipe)."""
    D = IndexMap.select(choice.hidden, teacher.d_model)
    Dh = teacher.head_dim
    plan: dict[str, ParamMap] = {}

    def linear(name: str, out_map, in_map, bias: bool) -> None:
        plan[f"{name}.weight"] = ParamMap(f"{name}.weight", (out_map, in_map))
        if bias:
            plan[f"{name}.bias"] = ParamMap(f"{name}.bias", (out_map,))

    def norm(name: str) -> None:
        plan[f"{name}.weight"] = ParamMap(f"{name}.weight", (D,))
        if teacher.norm == "layernorm" and teacher.bias:
            plan[f"{name}.bias"] = ParamMap(f"{name}.bias", (D,))

    plan["tok_emb.weight"] = ParamMap("tok_emb.weight", (None, D))
    if teacher.position == "learned":
        rows = IndexMap.select(range(student.max_seq_len), teacher.max_seq_len)
        plan["pos_emb.weight"] = ParamMap("pos_emb.weight", (rows, D))
    if teacher.n_segments:
        plan["seg_emb.weight"] = ParamMap("seg_emb.weight", (None, D))
    if teacher.embed_norm:
        norm("emb_norm")
    rep = student.n_heads // student.n_kv_heads
    for l in dict.fromkeys(choice.layers):
        dims = choice.head_dims[l]
        q = IndexMap.select(choice.q_heads[l], teacher.n_heads).per_unit(
            Dh, [dims[j // rep] for j in range(student.n_heads)])
        kv = IndexMap.select(choice.kv_heads[l], teacher.n_kv_heads).per_unit(Dh, dims)
        F = IndexMap.select(choice.ffn[l], teacher.d_ff)
        p = f"blocks.{l}."
        linear(p + "attn.qkv", IndexMap.cat([q, kv, kv]), D, teacher.bias)
        linear(p + "attn.proj", D, q, teacher.bias)
        linear(p + "mlp.fc1", IndexMap.cat([F, F]) if teacher.activation == "swiglu" else F, D, teacher.bias)
        linear(p + "mlp.fc2", D, F, teacher.bias)
        norms = ["norm1", "norm2"] + (["norm1_out", "norm2_out"]
                                      if teacher.norm_placement in ("sandwich", "dssn") else [])
        for n in norms:
            norm(p + n)
    if teacher.final_norm:
        norm("final_norm")
    if teacher.head in ("lm", "mlm") and not teacher.tie_embeddings:
        plan["lm_head.weight"] = ParamMap("lm_head.weight", (None, D))
    if teacher.head == "mlm":
        linear("mlm_dense", D, D, bias=True)  # the MLM transform and the pooler always have a bias
        norm("mlm_norm")
        plan["mlm_bias"] = ParamMap("mlm_bias", (None,))
    elif teacher.head == "cls":
        linear("pooler", D, D, bias=True)
        linear("classifier", None, D, bias=True)
    return plan, D


def extraction_plan(teacher: ModelConfig, student: ModelConfig, choice: ExtractionChoice) -> SurgeryPlan:
    """Per-parameter recipes of the student (names ``blocks.k.*`` of the student) from the teacher's tensors."""
    wplan, _ = _width_plan(teacher, student, choice)
    return compose_depth(wplan, choice.layers)


# ---------------------------------------------------------------------------- importance (ETD-Impt)
def _teacher_loss(model: TransformerLM, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    out = model(**batch)
    if out.loss is None:
        raise CompressionError("importance scores need batches with labels (the teacher's own loss is "
                               "differentiated); pass LM/MLM/classification batches")
    return out.loss


def importance_scores(teacher: TransformerLM, data: Any, n_batches: int = 4, *, loss_fn=None,
                      progress: bool = False) -> dict[str, Any]:
    """First-order Taylor importance of every hidden dim, head, kv head, head dim and FFN neuron.

    ``data`` has ``train_batch(step)`` (a BatchSource); batches 0..n_batches-1 are used. Returns
    ``{"hidden": (d,), "heads": [(H,)]*L, "kv_heads": [(Hkv,)]*L, "head_dims": [(Hkv, Dh)]*L, "ffn": [(d_ff,)]*L,
    "n_batches": n}`` (float64, CPU). See the module docstring for the groups. The teacher is left unchanged
    (eval mode during scoring; gradients are taken with ``torch.autograd.grad``, nothing is written to .grad).
    """
    if data is None or not hasattr(data, "train_batch"):
        raise CompressionError("ETD-Impt needs data: a batch source with train_batch(step) (e.g. the teacher's "
                               "corpus); pass data= or --corpus")
    if n_batches < 1:
        raise CompressionError(f"n_batches={n_batches} must be >= 1")
    cfg = teacher.config
    loss_fn = loss_fn or _teacher_loss
    L, H, Hkv, Dh = cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    # which axes of which tensors are the residual stream: the keep-all plan's hidden map D, by identity
    keep_all = choose_units(cfg, cfg, "leading", layers="bottom")
    wplan, D = _width_plan(cfg, cfg, keep_all)
    hidden_axes = {name: [dim for dim, m in enumerate(pm.maps) if m is D] for name, pm in wplan.items()}
    names = [n for n, _ in teacher.named_parameters()]
    params = [p for _, p in teacher.named_parameters()]
    f64 = dict(dtype=torch.float64)
    acc = {"hidden": torch.zeros(cfg.d_model, **f64), "heads": torch.zeros(L, H, **f64),
           "kv_heads": torch.zeros(L, Hkv, **f64), "head_dims": torch.zeros(L, Hkv, Dh, **f64),
           "ffn": torch.zeros(L, cfg.d_ff, **f64)}
    was_training = teacher.training
    flags = [p.requires_grad for p in params]
    teacher.eval()
    device = params[0].device
    it = range(n_batches)
    if progress:
        from ..progress import progress_bar

        it = progress_bar(it, desc="importance", unit="batch")
    try:
        for p in params:
            p.requires_grad_(True)
        for i in it:
            batch = {k: v.to(device) for k, v in data.train_batch(i).items()}
            with torch.enable_grad():
                grads = torch.autograd.grad(loss_fn(teacher, batch), params, allow_unused=True)
            wg = {n: (p.detach() * g).double().cpu() for n, p, g in zip(names, params, grads) if g is not None}
            hid = torch.zeros(cfg.d_model, **f64)
            for n, t in wg.items():
                for dim in hidden_axes.get(n, []):
                    other = [d for d in range(t.dim()) if d != dim]
                    hid += t.sum(dim=other) if other else t
                if len(hidden_axes.get(n, [])) == 2:  # (D, D) weights: the diagonal was counted twice
                    hid -= torch.diagonal(t)
            acc["hidden"] += hid.abs()
            for l in range(L):
                p = f"blocks.{l}."
                proj = wg.get(p + "attn.proj.weight")
                if proj is not None:
                    head = proj.sum(0).view(H, Dh).sum(-1).abs()  # (H,)
                    acc["heads"][l] += head
                    acc["kv_heads"][l] += head.view(Hkv, H // Hkv).sum(-1)
                qkv_w = wg.get(p + "attn.qkv.weight")
                if qkv_w is not None:
                    rows = qkv_w.sum(1)
                    if p + "attn.qkv.bias" in wg:
                        rows = rows + wg[p + "attn.qkv.bias"]
                    k_rows = rows[cfg.d_model:cfg.d_model + cfg.kv_dim].view(Hkv, Dh)
                    v_rows = rows[cfg.d_model + cfg.kv_dim:].view(Hkv, Dh)
                    acc["head_dims"][l] += k_rows.abs() + v_rows.abs()
                fc2 = wg.get(p + "mlp.fc2.weight")
                if fc2 is not None:
                    acc["ffn"][l] += fc2.sum(0).abs()
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
        teacher.train(was_training)
    return {"hidden": acc["hidden"], "heads": list(acc["heads"]), "kv_heads": list(acc["kv_heads"]),
            "head_dims": list(acc["head_dims"]), "ffn": list(acc["ffn"]), "n_batches": n_batches}


# ---------------------------------------------------------------------------- the verb
@dataclass
class ExtractOutput:
    model: TransformerLM
    choice: ExtractionChoice
    plan: SurgeryPlan
    function_preserving: str
    options: dict[str, Any]


def _claim(teacher: ModelConfig, student: ModelConfig) -> str:
    if all(getattr(teacher, k) == getattr(student, k) for k in SHRINKABLE if k != "max_seq_len"):
        return "exact (keep-all indices copy the teacher)"
    return "no: a norm over a subset of dims, dropped units and dropped layers change the function"


def extract(teacher: TransformerLM, student_cfg: ModelConfig, *, method: str = "rand", data: Any = None,
            n_batches: int = 4, seed: int = 0, layers: str | Sequence[int] | None = "uniform",
            scores: Mapping[str, Any] | None = None, progress: bool = False) -> ExtractOutput:
    """Extract a student from ``teacher`` and return it with the index choice and plan (see the module doc).

    ``method='impt'`` scores units on ``n_batches`` batches of ``data`` (or takes precomputed ``scores``)."""
    tcfg = teacher.config
    if method not in METHODS:
        raise CompressionError(f"unknown extraction method {method!r}; choose one of {', '.join(METHODS)}")
    check_extractable(tcfg, student_cfg)
    if method == "impt" and scores is None:
        scores = importance_scores(teacher, data, n_batches, progress=progress)
    choice = choose_units(tcfg, student_cfg, method, scores=scores, seed=seed, layers=layers)
    plan = extraction_plan(tcfg, student_cfg, choice)
    with torch.random.fork_rng(devices=[]):  # only shapes/dtypes are used: every tensor comes from the teacher
        torch.manual_seed(seed)
        student = TransformerLM(student_cfg)
    src_state = {k: v.detach().to("cpu", torch.float32) for k, v in teacher.state_dict().items()}
    state = apply_plan(plan.params, src_state, student.state_dict())
    student.load_state_dict(state)
    student.to(next(teacher.parameters()).device)
    options = {"method": method, "seed": seed, "layers": layers if isinstance(layers, str) or layers is None
               else list(layers)}
    if method == "impt":
        options["n_batches"] = int(scores.get("n_batches", n_batches))
    return ExtractOutput(student, choice, plan, _claim(tcfg, student_cfg), options)


def extract_student(teacher: TransformerLM, student_cfg: ModelConfig, *, method: str = "rand", data: Any = None,
                    n_batches: int = 4, seed: int = 0, layers: str | Sequence[int] | None = "uniform") -> TransformerLM:
    """ETD extraction: a standalone student TransformerLM initialised from ``teacher`` (see :func:`extract`)."""
    return extract(teacher, student_cfg, method=method, data=data, n_batches=n_batches, seed=seed,
                   layers=layers).model


# ---------------------------------------------------------------------------- checkpoint directories
def run_batches(run_dir: str | Path, cfg: ModelConfig, *, corpus: str | None = None, seed: int = 0):
    """(tokenizer, batch source) of the data a checkpoint was trained on (its trainer state or lineage data
    spec), optionally on another ``corpus``; shaped for ``cfg``."""
    from ..train import checkpoint as ckpt
    from ..train.run import RunSpec, build_data, saved_data_spec

    run_dir = Path(run_dir)
    tokenizer = ckpt.open_tokenizer(run_dir, "data for importance scores and proxy evaluation is tokenized with "
                                             "the checkpoint's own tokenizer", error=CompressionError)
    spec = RunSpec(model=cfg, data=saved_data_spec(run_dir))
    if corpus is not None:
        spec.data.corpus = corpus
    spec.data.seq_len = min(spec.data.seq_len, cfg.max_seq_len)
    spec.train.seed = seed
    tokenizer, data, _ = build_data(spec, tokenizer)
    return tokenizer, data


def extract_checkpoint(teacher_dir: str | Path, student: ModelConfig, out_dir: str | Path, *, method: str = "rand",
                       corpus: str | None = None, n_batches: int = 4, seed: int = 0,
                       layers: str | Sequence[int] | None = "uniform", target_name: str | None = None,
                       progress: bool = True) -> dict[str, Any]:
    """Extract from the checkpoint in ``teacher_dir`` and write a normal checkpoint directory to ``out_dir``
    (the teacher's tokenizer; lineage.json records the teacher, the method and every kept index)."""
    from ..train import checkpoint as ckpt

    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    ckpt.check_derived_dirs(teacher_dir, out_dir, role="teacher", verb="extract", error=CompressionError,
                            float_only="extraction slices full-precision weights")
    teacher, _, record = ckpt.open_checkpoint(teacher_dir, role="teacher", error=CompressionError)
    check_extractable(teacher.config, student)
    data = None
    if method == "impt":
        _, data = run_batches(teacher_dir, teacher.config, corpus=corpus, seed=seed)
    result = extract(teacher, student, method=method, data=data, n_batches=n_batches, seed=seed, layers=layers,
                     progress=progress)
    lineage: dict[str, Any] = {
        "verb": "extract", "method": method, "options": {**result.options, "corpus": corpus},
        "target": target_name or student.name, "teacher_config": teacher.config.to_dict(),
        "choice": result.choice.to_dict(), "flops": 0.0, "function_preserving": result.function_preserving,
        "parents": [record.parent("teacher")],
    }
    if record.data_spec:  # the teacher's lineage data, else its trainer state's data spec
        lineage["data"] = record.lineage.get("data", record.data_spec)
    model = result.model
    ckpt.save_checkpoint(out_dir, model.state_dict(), model.config, tokenizer_json=record.tokenizer_json,
                         lineage=lineage)
    return {"out_dir": str(out_dir), "method": method, "teacher_params": teacher.num_parameters(),
            "student_params": model.num_parameters(), "layers": result.choice.layers,
            "function_preserving": result.function_preserving}
