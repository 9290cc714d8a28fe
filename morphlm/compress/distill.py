"""Distillation runs: :func:`distill` (a :class:`~morphlm.compress.distill_loss.DistillLoss` through the one
training loop, ``fit``) and :func:`distill_run`, the ``morphlm distill`` verb (load a teacher, build or
initialise a student, run the TinyBERT stages into checkpoint directories).

The losses, their conventions and the layer-map convention (0-based teacher blocks per student block, the one
:class:`morphlm.surgery.LayerMap`) are documented in :mod:`morphlm.compress.distill_loss`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from .distill_loss import STAGES, DistillConfig, DistillLoss, distill_flops_per_token, teacher_layer_map
from .errors import CompressionError
from .lightmbert import freeze_embeddings, init_from_teacher, lightmbert_config, lightmbert_student

log = logging.getLogger("morphlm.compress.distill")

__all__ = ["distill", "distill_run", "load_teacher", "load_projections", "read_projections", "projection_state",
           "PROJECTIONS_FILE", "BertFramedBatches", "DistillConfig", "DistillLoss"]

# The student's distillation state: the projections W_e/W_h (TinyBERT, Jiao et al. 2020, arXiv:1909.10351,
# §3.1 eq. 8-9) that map its hidden states to the teacher's width. They belong to the student's training, not
# to the model: kept beside the resume state (state/, outside the servable files dir_bytes/shipped_bytes count),
# never in model.safetensors, so export (convert, quantize, pack) never sees them. Written atomically after
# every save of a distillation stage; its metadata binds it to the weights it was saved with (weights_sha256).
PROJECTIONS_FILE = "state/distill_projections.safetensors"


def projection_state(loss_fn: DistillLoss) -> dict[str, torch.Tensor]:
    """The projections a :class:`DistillLoss` holds (W_e/W_h, trained or not), detached CPU copies keyed like
    ``loss_fn.state_dict()``; empty when the loss has none (prediction/logit stages, equal widths with
    projection='none')."""
    return {k: v.detach().to("cpu").clone() for k, v in loss_fn.state_dict().items()}


def read_projections(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """(projections, metadata) saved with a distillation checkpoint, or None when it holds none.

    Reads :data:`PROJECTIONS_FILE` first, checked to belong to the directory's current weights. A run saved
    before that file existed — or one killed between its save and the file's write, whose file is stale — falls
    back to fit's aux state in state/optimizer.safetensors (``aux.param::``, committed with the weights); a
    stale file without that fallback (a stage that only carried the projections) is a CompressionError."""
    from ..train import checkpoint as ckpt

    run_dir = Path(run_dir)
    path = run_dir / PROJECTIONS_FILE
    stale = False
    if path.is_file():
        tensors, meta = ckpt.read_tensors(path, "distillation projections")
        weights = ckpt.read_config(run_dir)[1].get("weights_sha256")
        if meta.get("weights_sha256") in (None, weights):
            return tensors, meta
        stale = True
    out: dict[str, torch.Tensor] = {}
    if ckpt.has_trainer_state(run_dir):
        _, tensors = ckpt.load_trainer_state(run_dir)
        out = {k.split("::", 1)[1]: v for k, v in tensors.items() if k.startswith("aux.param::")}
    if stale and not out:
        raise CompressionError(f"{path} was saved with other weights than {run_dir}/{ckpt.MODEL_FILE} (a save "
                               f"was interrupted or the weights were replaced); rerun that distillation stage, "
                               f"or pass --fresh-projections to start from a fresh projection")
    if stale:
        log.warning("%s belongs to other weights than %s (an interrupted save): using the projections saved with "
                    "the weights in %s instead", path, ckpt.MODEL_FILE, ckpt.OPTIM_FILE)
    return (out, {"source": ckpt.OPTIM_FILE}) if out else None


def load_projections(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """The projection weights of a distillation run, keyed like ``DistillLoss.state_dict()``: from
    :data:`PROJECTIONS_FILE`, else (older runs) from fit's aux state in state/optimizer.safetensors."""
    found = read_projections(run_dir)
    if not found or not found[0]:
        raise CompressionError(f"{run_dir} holds no distillation projections (it was not trained by distill() "
                               f"with intermediate losses)")
    return found[0]


def _projection_widths(tensors: dict[str, torch.Tensor]) -> tuple[int, int] | None:
    """(student width, teacher width) of a projection state: the first weight maps d_student -> d_teacher."""
    for k in sorted(tensors):
        if k.endswith(".weight") and tensors[k].dim() == 2:
            return int(tensors[k].shape[1]), int(tensors[k].shape[0])
    return None


def _load_projections_into(loss_fn: DistillLoss, projections: dict[str, torch.Tensor]) -> None:
    """Copy ``projections`` into the loss's W_e/W_h; a key or shape mismatch is a CompressionError naming the
    widths and the fix, and nothing is changed."""
    own = loss_fn.state_dict()
    ds, dt = loss_fn.student_config.d_model, loss_fn.teacher_config.d_model
    given = _projection_widths(projections)
    widths = f"student {given[0]} -> teacher {given[1]}" if given else "no weights"
    fix = (f"pass projections trained with the same teacher width, student d_model and projection="
           f"{loss_fn.cfg.projection!r} (the same --projection), or none (--fresh-projections) to start fresh")
    if set(own) != set(projections):
        raise CompressionError(f"the given projections ({widths}; keys {sorted(projections)[:4]}) do not fit this "
                               f"distillation (student {ds} -> teacher {dt}, projection={loss_fn.cfg.projection!r}, "
                               f"keys {sorted(own)[:4]}); {fix}")
    bad = [k for k in own if tuple(own[k].shape) != tuple(projections[k].shape)]
    if bad:
        raise CompressionError(f"the given projections map {widths} but this distillation needs student {ds} -> "
                               f"teacher {dt} ({bad[0]}: {tuple(projections[bad[0]].shape)} vs "
                               f"{tuple(own[bad[0]].shape)}); {fix}")
    with torch.no_grad():
        for name, p in loss_fn.named_parameters():
            p.copy_(projections[name].to(dtype=p.dtype, device=p.device))


class _ProjectionSaver:
    """fit() callback: after every save, write the stage's projections (trained, or carried through a stage
    that has none) to OUT/:data:`PROJECTIONS_FILE`, atomically, under the directory's writer lock."""

    def __init__(self, loss_fn: DistillLoss, carried: dict[str, torch.Tensor] | None) -> None:
        self.loss_fn, self.carried = loss_fn, carried

    def on_save(self, state, out_dir) -> None:
        from ..train import checkpoint as ckpt

        own = projection_state(self.loss_fn)
        tensors = own or self.carried
        if not tensors:
            return
        widths = _projection_widths(tensors)
        meta = {"weights_sha256": str(ckpt.read_config(out_dir)[1].get("weights_sha256")), "step": str(state.step),
                "stage": self.loss_fn.cfg.stage, "projection": self.loss_fn.cfg.projection,
                "origin": "trained" if own else "carried",
                **({"student_width": str(widths[0]), "teacher_width": str(widths[1])} if widths else {})}
        with ckpt.writer_lock(out_dir):
            ckpt.write_tensors(Path(out_dir) / PROJECTIONS_FILE, tensors, meta)


def distill(teacher: nn.Module, student: nn.Module, data, args, cfg: DistillConfig | None = None, *,
            callbacks: Iterable[Any] = (), tokenizer_json: str | None = None, lineage: dict[str, Any] | None = None,
            extra_state: dict[str, Any] | None = None, projections: dict[str, torch.Tensor] | None = None,
            loss_fn: DistillLoss | None = None):
    """Distil ``teacher`` into ``student`` with fit(): the loss is :class:`DistillLoss`, its projections are
    trained by fit's optimizer and saved in the run's state; FLOPs per step = student training + teacher
    forward (+ projections). Returns fit's :class:`FitResult`; ``args.out_dir`` becomes a normal checkpoint
    directory of the student whose lineage names the teacher, with the projections in :data:`PROJECTIONS_FILE`.

    ``projections``: initial W_e/W_h (keys as ``DistillLoss.state_dict()``, e.g. :func:`load_projections` of the
    general-distillation run), loaded before training; a key/shape mismatch is a CompressionError. A stage without
    projections (prediction, logit) carries them unchanged into its checkpoint, so GD -> stage a -> stage b keeps
    them. ``loss_fn``: a prebuilt :class:`DistillLoss` (its cfg is used) — hold it to read the trained projections
    with :func:`projection_state` afterwards."""
    from ..train.loop import fit

    if loss_fn is not None:
        if loss_fn.teacher is not teacher:
            raise CompressionError("distill(loss_fn=...) was built for another teacher; build the DistillLoss with "
                                   "the teacher passed to distill()")
        cfg = loss_fn.cfg
    else:
        cfg = cfg or DistillConfig()
        loss_fn = DistillLoss(teacher, student.config, cfg)
    if projections and any(True for _ in loss_fn.parameters()):
        _load_projections_into(loss_fn, projections)
    teacher.eval()
    teacher.requires_grad_(False)
    if cfg.freeze_embeddings:
        frozen = freeze_embeddings(student)
        log.info("frozen student embedding parameters: %s", ", ".join(frozen))
    B, T = (int(n) for n in data.train_batch(0)["input_ids"].shape)
    n_proj = sum(1 for _ in loss_fn.proj) if cfg.projection != "shared" else (
        (1 if loss_fn.w["emb"] > 0 else 0)
        + (sum(1 for g in loss_fn.layer_map if g is not None) if loss_fn.w["hid"] > 0 else 0))
    fps = distill_flops_per_token(student.config, loss_fn.teacher_config, T, n_proj) * B * T
    args = dataclasses.replace(args, flops_per_step=args.flops_per_step or fps)
    lin = {"verb": "distill", "distill": {**cfg.to_dict(), "resolved_layer_map": loss_fn.layer_map.to_list()}}
    lin.update(lineage or {})
    aux = loss_fn if any(True for _ in loss_fn.parameters()) else None
    callbacks = [*callbacks, _ProjectionSaver(loss_fn, projections)]
    return fit(student, loss_fn, data, args, callbacks, tokenizer_json=tokenizer_json, lineage=lin,
               extra_state=extra_state, aux_modules=aux)


class BertFramedBatches:
    """Windows of another batch source framed as BERT's segments: ``[CLS] window [SEP]`` (two ids longer).

    Used for general distillation of a bidirectional masked-LM teacher whose tokenizer has [CLS]/[SEP]: the
    prepared store's windows (shared with training, which keeps them raw) start and end anywhere, while a BERT
    teacher was pretrained on segments opened by [CLS] and closed by [SEP] (Devlin et al. 2019, arXiv:1810.04805,
    §3). The added positions are attended to (``attention_mask`` 1) and never MLM targets (label -100).
    ``train_batch(step)`` stays a pure function of the inner source's (seed, step)."""

    def __init__(self, inner, cls_id: int, sep_id: int) -> None:
        self.inner, self.cls_id, self.sep_id = inner, int(cls_id), int(sep_id)

    def _frame(self, batch: dict) -> dict:
        ids = batch["input_ids"]
        B = ids.shape[0]

        def around(t: torch.Tensor, first: int, last: int) -> torch.Tensor:
            return torch.cat([torch.full((B, 1), first, dtype=t.dtype), t, torch.full((B, 1), last, dtype=t.dtype)], 1)

        out = dict(batch)
        out["input_ids"] = around(ids, self.cls_id, self.sep_id)
        out["attention_mask"] = around(batch.get("attention_mask", torch.ones_like(ids)), 1, 1)
        if "labels" in batch:
            out["labels"] = around(batch["labels"], -100, -100)
        return out

    def train_batch(self, step: int) -> dict:
        return self._frame(self.inner.train_batch(step))

    def val_batches(self) -> list[dict]:
        return [self._frame(b) for b in self.inner.val_batches()]


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
    from ..data.tokenizer import Tokenizer
    from ..interop.convert import _tokenizer_with_roles
    from ..interop.hf import load_hf_model

    ckpt.open_tokenizer(path, need, error=CompressionError)  # the error when the folder has none
    tokenizer = Tokenizer.from_json_str(_tokenizer_with_roles(path))  # with the roles the folder declares
    notes: list[str] = []
    model, _ = load_hf_model(path, notes=notes)
    for note in notes:  # an encoder-only folder: its fresh head teaches nothing; hidden states and attention do
        log.warning("teacher %s", note)
    weights = path / "model.safetensors"
    record = {"path": str(path.resolve()), "role": "teacher", "format": "huggingface", "flops": 0.0,
              "sha256": ckpt.sha256_file(weights) if weights.exists() else None}
    model.eval()
    return model, tokenizer, record


def _student_config(student: str, teacher_cfg, overrides: dict[str, Any]):
    from ..model import ModelConfig
    from ..model.config import PRESETS, release_derived

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
        raise CompressionError(f"--to {student!r} is neither a preset ({', '.join(sorted(PRESETS))}), a config "
                               f"file, a checkpoint directory nor 'teacher'")
    if "vocab_size" not in overrides and base.get("vocab_size") != teacher_cfg.vocab_size:
        base["vocab_size"] = teacher_cfg.vocab_size  # one tokenizer for both: the teacher's
    if "max_seq_len" not in overrides:
        base["max_seq_len"] = min(base.get("max_seq_len", teacher_cfg.max_seq_len), teacher_cfg.max_seq_len)
    # derived fields follow a changed shape unless they were set explicitly (one rule with train's, model/config.py)
    base = release_derived(base, overrides)
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
                student_overrides: dict[str, Any] | None = None, progress: bool = True,
                att_loss: str = "kl", head_map: str | list[int] = "auto", hid_loss: str = "normalized",
                fresh_projections: bool = False) -> dict[str, Any]:
    """``morphlm distill``: teacher dir + student (preset | config | dir | 'teacher' + overrides) → checkpoint dir.

    ``stage``: general | intermediate | prediction | logit | full | task (= intermediate into OUT/stage_a,
    then prediction into OUT). ``init``: auto (a student dir's own weights, else random) | random |
    teacher-layers (copy the teacher blocks named by the layer map) | lightmbert (bottom blocks, frozen
    embeddings). Data: ``corpus`` (unlabelled text, general stage) or ``task_train``/``task_val`` (labelled,
    task stages; ``augment`` = N_a TinyBERT variants per training example).

    Projections: a student directory kept with its own weights (``init`` auto) brings the W_e/W_h its
    distillation saved (:data:`PROJECTIONS_FILE`) when their widths match this student and teacher (logged;
    ``fresh_projections`` starts from fresh ones instead); stage a hands its projections to stage b, and every
    stage's checkpoint keeps them beside the student (never in its model file)."""
    import torch as _torch

    from ..data import ClassificationBatches, LMBatches, MLMBatches, load_task, prepare_lm_store
    from ..model import ModelConfig, TransformerLM
    from ..train import checkpoint as ckpt
    from ..train.optim import TrainArgs
    stages = ["intermediate", "prediction"] if stage == "task" else [stage]
    if stage != "task" and stage not in STAGES:
        raise CompressionError(f"unknown --stage {stage!r}; choose general, intermediate, prediction, task, logit or full")
    if init not in ("auto", "random", "teacher-layers", "lightmbert"):
        raise CompressionError(f"unknown --init {init!r}; choose auto, random, teacher-layers or lightmbert")
    out = Path(out)
    reads = [("teacher", teacher), ("student", student if Path(student).is_dir() else None),
             ("--augment-model", augment_model)]
    ckpt.claim_output_dir(out, "distill", inputs=reads, resume=resume == "auto", error=CompressionError)
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
        framed = head == "mlm" and not tcfg.causal and tok.has_role("cls") and tok.has_role("sep") and seq_len > 2
        if head == "mlm":
            data = MLMBatches(store, batch_size, seq_len - 2 if framed else seq_len, mask_id=tok.mask_id,
                              vocab_size=tok.vocab_size, seed=seed, special_ids=tok.special_ids)
            if framed:  # a bidirectional (BERT-style) teacher reads [CLS] text [SEP], as in its pretraining
                data = BertFramedBatches(data, tok.cls_id, tok.sep_id)
                data_spec["windows"] = "[CLS] text [SEP]"
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
        raise CompressionError(f"--to {student} is a directory but not a morphlm checkpoint (config.json + "
                               f"model.safetensors missing)")
    if from_dir and init == "auto":  # the student keeps its own weights: they must speak the teacher's tokens
        s_tok = ckpt.open_tokenizer(s_dir, error=CompressionError)
        if s_tok is not None and s_tok.fingerprint() != tok.fingerprint():
            raise CompressionError(
                f"--to {student} was trained with another tokenizer than the teacher {teacher} (their "
                f"tokenizer.json differ); distillation feeds both the teacher's token ids, so its weights would "
                f"read them as other tokens — use a student trained with the teacher's tokenizer, or --init random")
    s_fields = _student_config(student, tcfg, overrides)
    s_fields.update(head=head, n_classes=n_classes if head == "cls" else s_fields.get("n_classes", 2))
    if head in ("lm", "mlm") and bool(s_fields.get("causal", True)) != tcfg.causal:
        # the student learns the teacher's objective: next-token (causal attention) or masked (bidirectional)
        kind = "causal (next-token)" if tcfg.causal else "bidirectional masked-LM"
        if "causal" in overrides:
            raise CompressionError(f"the teacher {teacher} is a {kind} model but --causal {overrides['causal']} "
                                   f"gives the student the other attention; a student learns its teacher's "
                                   f"objective — drop --causal")
        log.warning("the teacher is a %s model: the student (%s) follows it with causal=%s", kind, student,
                    tcfg.causal)
        s_fields["causal"] = tcfg.causal
    if init == "lightmbert":
        n_layers = int(s_fields.get("n_layers", tcfg.n_layers))
        s_model = lightmbert_student(t_model, n_layers, head=head, n_classes=s_fields["n_classes"], seed=seed)
    else:
        s_cfg = ModelConfig.from_dict(s_fields)
        if init == "teacher-layers":
            # a map with unsupervised blocks names no teacher block to copy for them: copy along the uniform map
            init_map = "uniform" if teacher_layer_map(layer_map, tcfg.n_layers, s_cfg.n_layers).has_gaps else layer_map
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
                    raise CompressionError(f"--to {student}: its weights do not fit the student config "
                                           f"({missing[:3]} ...); drop the conflicting overrides")
                s_model.load_state_dict(fitting, strict=False)
                parents.append(ckpt.parent_record(s_dir, "student-init"))
    if init == "lightmbert" and stage != "task" and stage not in ("general", "intermediate", "full"):
        raise CompressionError("--init lightmbert uses TinyBERT-style intermediate losses: use --stage general, "
                               "intermediate, full or task")

    # ---- projections carried from the student's earlier distillation (TinyBERT keeps W_h with the student) --
    carried: dict[str, torch.Tensor] | None = None
    carried_from = "fresh"  # recorded in each stage's lineage: where its initial W_e/W_h came from
    if from_dir and init == "auto" and not fresh_projections:
        found = read_projections(s_dir)
        if found and found[0]:
            widths = _projection_widths(found[0])
            if widths == (s_model.config.d_model, tcfg.d_model):
                carried, carried_from = found[0], str(s_dir.resolve())
                log.info("projections W_e/W_h (student %d -> teacher %d) carried from %s (--fresh-projections to "
                         "start from fresh ones)", widths[0], widths[1], s_dir)
            else:
                log.warning("the projections saved in %s map widths %s, not this student's %d -> teacher %d: "
                            "starting from fresh projections", s_dir, widths, s_model.config.d_model, tcfg.d_model)

    # ---- stages ----------------------------------------------------------------------------------------
    results = []
    stage_parents = [t_record, *parents]
    for i, st in enumerate(stages):
        last = i == len(stages) - 1
        st_out = out if last else out / "stage_a"
        if init == "lightmbert" and st != "prediction":
            dcfg = lightmbert_config(tcfg, s_model.config, layer_map=layer_map, temperature=temperature,
                                     teacher_path=t_record["path"])
            dcfg.stage = st
            dcfg = dataclasses.replace(dcfg, att_loss=att_loss, head_map=head_map, hid_loss=hid_loss)
        else:
            dcfg = DistillConfig(stage=st, layer_map=layer_map, temperature=temperature,
                                 hard_label_weight=hard_label_weight, projection=projection,
                                 freeze_embeddings=init == "lightmbert", teacher_path=t_record["path"],
                                 att_loss=att_loss, head_map=head_map, hid_loss=hid_loss)
        steps = max_steps if (st != "prediction" or pred_steps is None or len(stages) == 1) else pred_steps
        st_lr = lr if (st != "prediction" or pred_lr is None) else pred_lr
        args = TrainArgs(out_dir=str(st_out), max_steps=steps, lr=st_lr, warmup_steps=min(warmup_steps, steps - 1),
                         schedule="constant" if st == "intermediate" else "linear", min_lr_ratio=0.0,
                         weight_decay=0.01, eval_every=eval_every, save_every=save_every, seed=seed, resume=resume,
                         device=device, progress=progress)
        lineage = {"teacher": t_record["path"], "stage": st, "data": data_spec, "parents": stage_parents,
                   "student": student, "init": init, "projections_from": carried_from}
        res = distill(t_model, s_model, data, args, dcfg, tokenizer_json=tok.to_json_str(), lineage=lineage,
                      extra_state={**fps, "data_spec": data_spec}, projections=carried)
        results.append({"stage": st, "out_dir": str(st_out), "steps": res.steps, "flops": res.flops,
                        **{k: v for k, v in res.metrics.items() if k.startswith("val_")}})
        stage_parents = [ckpt.parent_record(st_out, "stage-a")]
        found = read_projections(st_out) if not last else None  # stage a's projections go on to stage b
        if found and found[0]:
            carried, carried_from = found[0], str(Path(st_out).resolve())
    return {"out_dir": str(out), "teacher": t_record["path"], "stages": results,
            "teacher_params": sum(p.numel() for p in t_model.parameters()),
            "student_params": sum(p.numel() for p in s_model.parameters()),
            "total_flops": ckpt.total_flops(out)}
