"""The compression benchmark's distillation arms: the three baselines (``scratch``, ``teacher_layers``,
``kd``), TinyBERT (general + task distillation), Extract-then-Distill (``etd_rand``, ``etd_impt``) and
LightMBERT. Each arm is ``arm_<name>(ctx, seed) -> dict`` (the per-(arm, seed) result)."""

from __future__ import annotations

import dataclasses
import time

import torch
from torch import nn

from ..model.transformer import TransformerLM
from ..train import checkpoint as ckpt
from .compression_context import (KD_TEMPERATURE, AccuracyCurve, Context, distill_stage, extract_from_teacher,
                                  learned, loss_settings, steps_to_reach, student_result, task_distill,
                                  train_labels, uniform_map)
from .runner import check_stop


def arm_scratch(ctx: Context, seed: int) -> dict:
    """B0: random-init student, cross-entropy on the labels."""
    student = ctx.new_student(seed)
    curve = AccuracyCurve(ctx.task.dev_batches(), ctx.sizes.eval_every)
    r = train_labels(ctx, student, seed, callbacks=[curve])
    return student_result(ctx, student, curve, r.steps, r.flops)


def arm_teacher_layers(ctx: Context, seed: int) -> dict:
    """B1: student initialised from uniformly selected teacher layers (leading width slices), then CE."""
    student = extract_from_teacher(ctx, "leading", seed)
    curve = AccuracyCurve(ctx.task.dev_batches(), ctx.sizes.eval_every)
    r = train_labels(ctx, student, seed, callbacks=[curve])
    return student_result(ctx, student, curve, r.steps, r.flops, init="leading slices, uniform layers")


def arm_kd(ctx: Context, seed: int) -> dict:
    """B2: random-init student, Hinton logit distillation: t²-scaled soft CE at t = 2 plus hard-label CE
    (distill.py's ``logit`` stage and its documented reduction)."""
    student = ctx.new_student(seed)
    curve = AccuracyCurve(ctx.task.dev_batches(), ctx.sizes.eval_every)
    r = distill_stage(ctx, ctx.teacher, student, ctx.data(seed), ctx.sizes.student_steps, seed, "logit",
                 callbacks=[curve], temperature=KD_TEMPERATURE)
    return student_result(ctx, student, curve, r.steps, r.flops)


def general_distilled(ctx: Context, layer_map=None, steps: int | None = None
                      ) -> tuple[TransformerLM, float, dict[str, torch.Tensor]]:
    """TinyBERT general distillation from the pretrained (not fine-tuned) teacher on unlabelled text:
    (student, FLOPs, trained projections W_e/W_h — the student's distillation state, handed to task
    distillation as TinyBERT keeps them).

    It is task-agnostic, so it runs ONCE per layer map (seed 0) and every task-distillation seed starts from
    it (cached as a checkpoint under the work dir, its projections beside the weights); its FLOPs are reported
    as extra compute."""
    s = ctx.sizes
    steps = steps or s.gd_steps
    layer_map = list(layer_map) if layer_map is not None else uniform_map(ctx)
    out = ctx.cdir / "students" / f"gd0-{'-'.join(map(str, layer_map))}-{steps}"  # gd0: 0-based maps
    proj_file = out / "gd_projections.safetensors"
    student = ctx.new_student(0)
    if ckpt.has_checkpoint(out) and proj_file.is_file():
        state, _ = ckpt.load_state_dict(out)
        student.load_state_dict(state)
        projections, _ = ckpt.read_tensors(proj_file, "general-distillation projections")
        return student, float((ckpt.read_lineage(out) or {}).get("flops", 0.0)), projections
    keep: dict = {}
    r = distill_stage(ctx, ctx.teacher_pre, student, ctx.gd_data(s.batch_size, 0), steps, 0, "general",
                      layer_map=layer_map, keep=keep, **loss_settings(s))
    check_stop(f"general distillation {layer_map}")
    ckpt.save_checkpoint(out, student.state_dict(), student.config, lineage={"verb": "bench:gd", "flops": r.flops})
    ckpt.write_tensors(proj_file, keep["projections"])
    return student, r.flops, keep["projections"]


def arm_tinybert(ctx: Context, seed: int) -> dict:
    """TinyBERT as the paper runs it: random init, general distillation (extra compute; its W_h carried into
    task distillation), then task distillation (intermediate + prediction)."""
    s = ctx.sizes
    student, gd_flops, projections = general_distilled(ctx)
    res = task_distill(ctx, student, seed, layer_map=uniform_map(ctx), projections=projections)
    res.update(init="random + general distillation", gd_steps=s.gd_steps, gd_flops=gd_flops,
               gd_tokens=s.gd_steps * s.batch_size * s.max_len)
    return res


def arm_tinybert_tl(ctx: Context, seed: int) -> dict:
    """The TinyBERT task-distillation recipe from a student initialised with the uniformly mapped teacher
    layers (leading width slices) instead of general distillation."""
    student = extract_from_teacher(ctx, "leading", seed)
    res = task_distill(ctx, student, seed, layer_map=uniform_map(ctx))
    res["init"] = "teacher-layer slices (uniform map, leading widths)"
    return res


def arm_tinybert_etd(ctx: Context, seed: int) -> dict:
    """The TinyBERT task-distillation recipe from an Extract-then-Distill student (Taylor-importance
    extraction of the uniformly mapped teacher layers) instead of general distillation."""
    t0 = time.perf_counter()
    student = extract_from_teacher(ctx, "impt", seed)
    extract_s = time.perf_counter() - t0
    res = task_distill(ctx, student, seed, layer_map=uniform_map(ctx))
    res.update(init="ETD extraction (Taylor importance, uniform map)", extract_s=extract_s)
    return res


def _one_stage_distill(ctx: Context, student: nn.Module, seed: int) -> dict:
    """ETD's distillation: TinyBERT losses (embedding + attention + hidden over the uniform map) and the
    prediction loss together in ONE stage (distill.py's ``full``), so dev accuracy is meaningful at every
    step and steps-to-target can be read off the curve."""
    s = ctx.sizes
    curve = AccuracyCurve(ctx.task.dev_batches(), s.etd_eval_every)
    r = distill_stage(ctx, ctx.teacher, student, ctx.data(seed), s.student_steps, seed, "full",
                      layer_map=uniform_map(ctx), callbacks=[curve], **loss_settings(s))
    return student_result(ctx, student, curve, r.steps, r.flops)


def _etd(ctx: Context, seed: int, method: str) -> dict:
    """Extract-then-Distill vs the same one-stage distillation from random init (the 'non-extracted'
    student, computed once per seed and cached as ``etd_ref``). Compute saving = 1 - (steps for the
    extracted student to first reach the reference's final dev accuracy) / (reference steps); both runs
    cost the same FLOPs per step (same student shape, same teacher), so the step ratio is the FLOPs ratio.
    The resolution is ``etd_eval_every`` steps. Extraction is from the fine-tuned teacher (task setting; the
    paper extracts from the pretrained one before task-agnostic distillation - a declared difference)."""
    ref = ctx.cached_arm("etd_ref", seed, lambda: _one_stage_distill(ctx, ctx.new_student(seed), seed))
    t0 = time.perf_counter()
    student = extract_from_teacher(ctx, method, seed)
    extract_s = time.perf_counter() - t0
    res = _one_stage_distill(ctx, student, seed)
    target = ref["dev_acc"]
    total = ref["steps"]
    margin = ctx.sizes.learn_margin
    ref_learned = learned(ref["curve"], ctx.majority, margin)
    res["reference"] = {"dev_acc": target, "steps": total, "curve": ref["curve"], "init": "random",
                        "learned": ref_learned, "majority_rate": ctx.majority, "learn_margin": margin}
    res["extract_s"] = extract_s
    if not ref_learned:  # a saving against a reference that learned nothing measures nothing
        res["compute_saving"] = None
        res["saving_status"] = (f"not measurable: the random-init reference never rose {margin:.0%} above the "
                                f"majority-class rate ({ctx.majority:.1%}) at any logged step")
        return res
    reach = steps_to_reach(res["curve"], target)
    res["steps_to_reference_acc"] = reach
    res["compute_saving"] = (1.0 - reach / total) if reach is not None else 0.0
    res["reached_reference"] = reach is not None
    res["saving_status"] = "measured"
    return res


def arm_etd_rand(ctx: Context, seed: int) -> dict:
    return _etd(ctx, seed, "rand")


def arm_etd_impt(ctx: Context, seed: int) -> dict:
    return _etd(ctx, seed, "impt")


def arm_lightmbert(ctx: Context, seed: int) -> dict:
    """LightMBERT recipe (monolingual here: no multilingual labelled data is available offline, so
    cross-lingual transfer is NOT evaluated): a teacher-WIDTH 4-layer student copied from the pretrained
    teacher's bottom layers, embeddings copied and frozen, general distillation (attention + hidden, no
    embedding loss) on unlabelled text, then task distillation with the embeddings still frozen."""
    from ..compress import lightmbert as lmod
    s = ctx.sizes
    n_layers = ctx.student_cfg.n_layers
    torch.manual_seed(seed)
    student = lmod.lightmbert_student(ctx.teacher_pre, n_layers, head="cls", n_classes=2, seed=seed)
    for name, p in student.named_parameters():
        p.requires_grad_(not name.startswith(("tok_emb", "pos_emb", "seg_emb", "emb_norm")))
    gcfg = lmod.lightmbert_config(ctx.teacher_pre.config, student.config)
    over = {k: v for k, v in dataclasses.asdict(gcfg).items() if k not in ("stage", "layer_map")}
    # LightMBERT's term weights (no embedding loss), with the profile's loss forms (scale-aware by default)
    over.update({k: v for k, v in loss_settings(s).items() if not k.endswith("_weight")})
    gd_steps = s.lightmbert_gd_steps or s.gd_steps
    gd_dir = ctx.cdir / "students" / f"lightmbert-gd-{gd_steps}"
    if ckpt.has_checkpoint(gd_dir):  # general distillation is task-agnostic: once (seed 0), shared by seeds
        state, _ = ckpt.load_state_dict(gd_dir)
        student.load_state_dict(state)
        gd_flops = float((ckpt.read_lineage(gd_dir) or {}).get("flops", 0.0))
    else:
        r0 = distill_stage(ctx, ctx.teacher_pre, student, ctx.gd_data(s.batch_size, 0), gd_steps, 0, "general", **over)
        gd_flops = r0.flops
        check_stop("LightMBERT general distillation")
        ckpt.save_checkpoint(gd_dir, student.state_dict(), student.config,
                             lineage={"verb": "bench:lightmbert-gd", "flops": gd_flops})
    n1 = int(round(s.student_steps * s.td_intermediate_frac))
    frozen = {"freeze_embeddings": True, "projection": over.get("projection", "shared")}
    tdata = ctx.data(seed)
    r1 = distill_stage(ctx, ctx.teacher, student, tdata, n1, seed, "intermediate", layer_map=uniform_map(ctx),
                       **frozen, **{k: v for k, v in over.items() if k not in frozen}) if n1 > 0 else None
    curve = AccuracyCurve(ctx.task.dev_batches(), s.eval_every, step_offset=n1)
    r2 = distill_stage(ctx, ctx.teacher, student, tdata, s.student_steps - n1, seed + 7919, "prediction",
                  callbacks=[curve], **frozen)
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    n1_steps, n1_flops = (r1.steps, r1.flops) if r1 is not None else (0, 0.0)
    return student_result(ctx, student, curve, n1_steps + r2.steps, n1_flops + r2.flops, gd_steps=gd_steps,
                           gd_flops=gd_flops, trainable_params=trainable,
                           cross_lingual="not evaluated: no multilingual labelled data offline")
