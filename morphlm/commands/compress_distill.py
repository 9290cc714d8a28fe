"""``morphlm distill`` (TinyBERT / LightMBERT / logit KD) and ``morphlm search layermap``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .base import _parse_extra, _setup_logging, app, friendly, search_app
from .options import model_options, typed_settings, verb, with_config


def _overrides(ctx: typer.Context) -> dict:
    """The student-shape settings passed through as --field value (ModelConfig fields), typed and checked: a typo
    of one of them or of the command's own options is named with the closest flag."""
    own = [f for p in ctx.command.params for f in getattr(p, "opts", [])]
    return typed_settings(_parse_extra(ctx.args), model_options(), own=own, what="option or student setting")


@app.command(cls=verb({"--student": "--to"}),
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@with_config
@friendly
def distill(
    ctx: typer.Context,
    teacher: Path = typer.Option(..., help="Teacher: a morphlm checkpoint dir or a Hugging Face model dir."),
    student: str = typer.Option(..., "--to", help="Student: a preset (tiny-bert, small-bert, ...), a config "
                                                  ".json/.yaml, a checkpoint dir, or 'teacher' (the teacher's config); "
                                                  "change its shape with --n-layers 2 --d-model 128 ... (derived "
                                                  "n_kv_heads/d_ff follow unless given)."),
    out: Path = typer.Option(..., help="Checkpoint directory to write (stage a of --stage task goes to OUT/stage_a)."),
    init: str = typer.Option("auto", help="auto (a student dir's weights, else random) | random | teacher-layers "
                                          "(copy the mapped teacher blocks) | lightmbert (bottom blocks, frozen "
                                          "embeddings)."),
    stage: str = typer.Option("general", help="general (unlabelled text: emb+att+hid) | intermediate (task stage a) | "
                                              "prediction (task stage b: soft CE) | task (a then b) | logit (Hinton KD "
                                              "baseline) | full (all terms)."),
    corpus: Optional[str] = typer.Option(None, help="Unlabelled text for --stage general: a corpus name, file, glob."),
    task_train: Optional[Path] = typer.Option(None, help="Labelled training file (TSV/CSV/JSONL)."),
    task_val: Optional[Path] = typer.Option(None, help="Labelled validation file."),
    augment: int = typer.Option(0, help="TinyBERT data augmentation: N_a variants per training example (0 = off)."),
    augment_model: Optional[Path] = typer.Option(
        None, help="Masked-LM checkpoint whose predictions give candidates (default: the teacher; a classifier "
                   "teacher gives embedding neighbours only)."),
    augment_k: int = typer.Option(15, help="K candidates per word."),
    augment_p: float = typer.Option(0.4, help="p_t: probability of replacing a word."),
    layer_map: str = typer.Option("uniform", help="uniform | top | bottom | 0-based teacher blocks, one per student "
                                                  "block, e.g. 1,3,5 (- = unsupervised, e.g. -,3,5), or "
                                                  "@REPORT.json of `morphlm search layermap`."),
    temperature: float = typer.Option(1.0, help="Softmax temperature of the prediction loss (t² scaled)."),
    hard_label_weight: Optional[float] = typer.Option(None, help="Weight of CE on gold labels (default: 1 for "
                                                                 "--stage logit, else 0)."),
    projection: str = typer.Option("shared", help="shared | per_layer | none: hidden-state projection W_h."),
    att_loss: str = typer.Option("kl", help="Attention term: kl (default; MiniLM: KL of the attention "
                                            "distributions, mean over valid query rows) | centred (scores centred "
                                            "per query row over its valid keys, then MSE: a constant row offset "
                                            "costs nothing) | mse (TinyBERT: raw pre-softmax score MSE, which a "
                                            "real teacher's large scores make dominate every other term)."),
    head_map: str = typer.Option("auto", help="How teacher heads meet student heads: auto (equal → one to one, "
                                              "k·h → group mean, else all-heads mean) | mean (group mean; for kl "
                                              "the mean of probabilities) | subset (evenly spaced teacher heads, "
                                              "12→4: 0,3,6,9) | one 0-based teacher head per student head, e.g. "
                                              "0,4,8,11."),
    hid_loss: str = typer.Option("normalized", help="Hidden-state terms (embeddings and blocks): normalized "
                                                    "(default; MSE ÷ the teacher's variance over valid tokens: "
                                                    "scale-free) | cosine (mean over valid tokens of 1 − cos) | "
                                                    "mse (TinyBERT)."),
    max_steps: int = typer.Option(200, help="Optimizer steps (of stage a for --stage task)."),
    pred_steps: Optional[int] = typer.Option(None, help="Steps of stage b for --stage task (default: --max-steps)."),
    batch_size: int = typer.Option(16, help="Sequences per step."),
    seq_len: int = typer.Option(128, help="Tokens per sequence (task inputs are truncated to it)."),
    lr: float = typer.Option(5e-4, help="Peak learning rate."),
    pred_lr: Optional[float] = typer.Option(None, help="Learning rate of stage b (default: --lr)."),
    warmup_steps: int = typer.Option(10),
    eval_every: int = typer.Option(0, help="Evaluate every N steps (0: at the end)."),
    save_every: int = typer.Option(0, help="Save every N steps (0: at the end)."),
    seed: int = typer.Option(0),
    resume: str = typer.Option("never", help="'auto': continue the run(s) in --out."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    max_bytes: int = typer.Option(4_000_000, help="Cap on corpus bytes (0 = none)."),
    fresh_projections: bool = typer.Option(False, "--fresh-projections",
                                           help="Do not carry the W_e/W_h projections saved with a --to student "
                                                "directory: start from fresh ones."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Distil a teacher into a student (TinyBERT losses over a layer map; LightMBERT with --init lightmbert;
    plain logit KD with --stage logit). Reads and writes checkpoint directories; the student's lineage.json
    names the teacher and adds its cost. Extra --field value options change the student config."""
    _setup_logging(verbose)
    from ..compress.distill import distill_run
    from ..compress.distill_loss import DistillConfig
    from ..compress.layermap import read_layer_map_arg

    layer_map = read_layer_map_arg(layer_map)
    DistillConfig(att_loss=att_loss, head_map=head_map, hid_loss=hid_loss).validate()  # before any data is read

    info = distill_run(teacher, student, out, init=init, stage=stage, corpus=corpus,
                       task_train=str(task_train) if task_train else None,
                       task_val=str(task_val) if task_val else None, augment=augment,
                       augment_model=str(augment_model) if augment_model else None, augment_k=augment_k,
                       augment_p=augment_p, layer_map=layer_map, temperature=temperature,
                       hard_label_weight=hard_label_weight, projection=projection, max_steps=max_steps,
                       pred_steps=pred_steps, batch_size=batch_size, seq_len=seq_len, lr=lr, pred_lr=pred_lr,
                       warmup_steps=warmup_steps, eval_every=eval_every, save_every=save_every, seed=seed,
                       resume=resume, device=device, max_bytes=max_bytes or None, student_overrides=_overrides(ctx),
                       att_loss=att_loss, head_map=head_map, hid_loss=hid_loss,
                       fresh_projections=fresh_projections)
    if as_json:
        typer.echo(json.dumps(info, default=str))
        return
    for st in info["stages"]:
        vals = "  ".join(f"{k} {v:.4f}" for k, v in st.items() if k.startswith("val_") and isinstance(v, float))
        typer.echo(f"{st['stage']}: {st['steps']} steps, {st['flops']:.3g} FLOPs  {vals} → {st['out_dir']}")
    typer.echo(f"student {info['student_params']:,} params vs teacher {info['teacher_params']:,} "
               f"({info['teacher_params'] / max(info['student_params'], 1):.2f}x smaller); total FLOPs incl. "
               f"parents {info['total_flops']:.3g} → {info['out_dir']}")


@search_app.command("layermap", cls=verb({"--student": "--to", "--gd-steps": "--max-steps",
                                          "--ft-steps": "--finetune-steps", "--gd-lr": "--lr",
                                          "--ft-lr": "--finetune-lr"}),
                   context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@with_config
@friendly
def search_layermap(
    ctx: typer.Context,
    teacher: Path = typer.Option(..., help="Pretrained (lm/mlm) teacher: morphlm checkpoint or Hugging Face dir."),
    student: str = typer.Option(..., "--to", help="Student preset / config / dir / 'teacher'; --n-layers 3 etc. "
                                                  "change it."),
    corpus: str = typer.Option(..., help="Unlabelled text for the proxy general distillation."),
    task_train: Path = typer.Option(..., help="Labelled training file of the proxy fine-tune."),
    task_val: Path = typer.Option(..., help="Labelled dev file: fitness = --metric on it."),
    out: Path = typer.Option(Path("layermap_search.json"), help="Report JSON (history, best, baselines)."),
    methods: str = typer.Option("ga,random", help="ga, random or both (random gets the GA's evaluation count)."),
    budget: int = typer.Option(30, help="Distinct proxy evaluations for the GA."),
    population: int = typer.Option(10),
    elitism: int = typer.Option(2),
    tournament: int = typer.Option(3),
    mutation_rate: Optional[float] = typer.Option(None, help="Per-gene mutation probability (default 1/M)."),
    monotone: bool = typer.Option(False, "--monotone/--free", help="Only non-decreasing maps."),
    allow_skip: bool = typer.Option(False, "--allow-skip", help="Genes may be - (student block unsupervised)."),
    exhaustive: bool = typer.Option(False, "--exhaustive", help="Also score every mapping (ground truth; small spaces)."),
    gd_steps: int = typer.Option(100, "--max-steps", help="Proxy general-distillation steps per candidate."),
    ft_steps: int = typer.Option(100, "--finetune-steps", help="Proxy fine-tuning steps per candidate (after the "
                                                                "distillation)."),
    gd_lr: float = typer.Option(1e-3, "--lr", help="Learning rate of the proxy distillation."),
    ft_lr: float = typer.Option(1e-3, "--finetune-lr", help="Learning rate of the proxy fine-tuning."),
    batch_size: int = typer.Option(16),
    seq_len: int = typer.Option(64),
    max_bytes: int = typer.Option(400_000, help="Size of the sampled proxy corpus (bytes)."),
    metric: str = typer.Option("accuracy", help="Fitness: accuracy (dev) | neg_loss (−dev cross entropy; use it when "
                                                 "short proxies leave every map at the majority rate)."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print only the report's summary as one JSON object."),
) -> None:
    """Genetic search over student→teacher layer maps in a proxy setting (short general distillation on a
    sampled corpus + short fine-tune, fitness = dev accuracy or −loss, cached), against random search at the same
    number of evaluations and the uniform/top/bottom maps."""
    _setup_logging()
    from ..compress.layermap import GAConfig, ProxySetting, layermap_search_run

    cfg = GAConfig(population=population, budget=budget, elitism=elitism, tournament=tournament,
                   mutation_rate=mutation_rate, allow_skip=allow_skip, monotone=monotone, seed=seed)
    setting = ProxySetting(gd_steps=gd_steps, ft_steps=ft_steps, gd_lr=gd_lr, ft_lr=ft_lr, seed=seed, device=device,
                           metric=metric)
    report = layermap_search_run(str(teacher), student, corpus=corpus, task_train=str(task_train),
                                 task_val=str(task_val), cfg=cfg, setting=setting,
                                 methods=[m.strip() for m in methods.split(",") if m.strip()], exhaustive=exhaustive,
                                 batch_size=batch_size, seq_len=seq_len, max_bytes=max_bytes or None,
                                 student_overrides=_overrides(ctx), out=str(out))
    if as_json:
        typer.echo(json.dumps({k: report[k] for k in ("best", "baselines", "ga", "random", "proxy_evaluations")
                               if k in report}, default=str))
        return
    from ..compress.layermap import layer_map_string

    for name, b in report["baselines"].items():
        typer.echo(f"{name:8s} {layer_map_string(b['mapping'])}  fitness {b['fitness']:.4f}")
    for k in ("ga", "random"):
        if k in report:
            r = report[k]
            typer.echo(f"{k:8s} {layer_map_string(r['best'])}  fitness {r['best_fitness']:.4f}  "
                       f"({r['n_evaluations']} evaluations)")
    typer.echo(f"best {report['best']['layer_map']} ({report['best']['found_by']}, {report['best']['fitness']:.4f}); "
               f"{report['proxy_evaluations']} proxy runs → {out}; distill with --layer-map "
               f"{report['best']['layer_map']} or --layer-map @{out}")
    typer.echo(json.dumps({"best": report["best"]}))
