"""`morphlm extract` (Extract-then-Distill) and `morphlm search arch` (AutoTinyBERT super-model training and
latency-constrained architecture search). The logic lives in morphlm/compress/extract.py and nas.py."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Optional

import typer

from .base import _parse_extra, _setup_logging, app, friendly, search_app
from .core import _TRAIN_FIELDS
from .options import NULL, model_options, typed_settings, verb, with_config


def _ints(text: Optional[str], what: str) -> Optional[tuple[int, ...]]:
    """'1:4' / '96:384:16' / '4,8,12' → a tuple of ints (None stays None)."""
    if text is None:
        return None
    from ..compress import CompressionError

    sep = ":" if ":" in text else ","
    try:
        vals = tuple(int(x) for x in text.split(sep) if x.strip())
    except ValueError:
        raise CompressionError(f"--{what} {text!r}: use min:max[:step] (e.g. 96:384:16) or a list like "
                               f"4,8,12") from None
    if not vals:
        raise CompressionError(f"--{what} is empty")
    return vals


@app.command("extract", cls=verb(), context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@with_config
@friendly
def extract_cmd(
    ctx: typer.Context,
    teacher_dir: Path = typer.Argument(..., help="Checkpoint directory of the teacher."),
    to: Optional[str] = typer.Option(None, "--to", help="Student shape: a preset name or a config .json/.yaml "
                                     "(default: the teacher's config). Extra --field value options override it, "
                                     "e.g. --d-model 192 --n-layers 3 --d-ff 768."),
    method: str = typer.Option("rand", help="rand (ETD-Rand) | impt (ETD-Impt, Taylor importance) | leading."),
    out: Path = typer.Option(..., help="Checkpoint directory to write."),
    corpus: Optional[str] = typer.Option(None, help="impt: score importance on this corpus instead of the "
                                                    "teacher's own training data."),
    n_batches: int = typer.Option(4, help="impt: batches of the teacher's loss to score importance on."),
    layers: str = typer.Option("uniform", help="Teacher layers to keep: uniform (TinyBERT's g(m) = m·N/M) | "
                                               "bottom | top | 0-based teacher layers, one per student layer, "
                                               "like 1,3,5."),
    seed: int = typer.Option(0, help="Seed of ETD-Rand's random subsets."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Extract a smaller student from a teacher (Extract-then-Distill): ONE hidden index set for the whole
    residual stream, heads (GQA-consistent) and head dims, FFN neurons, uniform layer selection. Writes a
    normal checkpoint directory with the teacher's tokenizer; lineage.json records the teacher and every
    kept index. Use it as the initialisation for distillation."""
    _setup_logging(verbose)
    from ..compress.extract import extract_checkpoint
    from ..grow.api import resolve_target
    from ..train.checkpoint import read_config

    teacher_cfg, _ = read_config(teacher_dir)
    base = resolve_target(to) if to else teacher_cfg
    own = [f for p in ctx.command.params for f in getattr(p, "opts", [])]
    extra = typed_settings(_parse_extra(ctx.args), model_options(), own=own, what="option or student setting")
    student = base.derive(**extra)  # derived fields (n_kv_heads, d_ff) follow the new shape unless given
    info = extract_checkpoint(teacher_dir, student, out, method=method, corpus=corpus, n_batches=n_batches,
                              seed=seed, layers=layers, target_name=to or "teacher-config")
    if as_json:
        typer.echo(json.dumps(info, default=str))
        return
    typer.echo(f"extracted {teacher_dir} ({info['teacher_params']:,} params) → {info['out_dir']} "
               f"({info['student_params']:,} params) by {method}; teacher layers {info['layers']}; "
               f"function-preserving: {info['function_preserving']}")


@search_app.command("arch", cls=verb(), context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@friendly
def search_arch(
    ctx: typer.Context,
    supernet_dir: Path = typer.Argument(..., help="Super-model checkpoint directory (written by --train-supernet)."),
    train_supernet: bool = typer.Option(False, "--train-supernet", help="Train (or resume) the weight-shared "
                                        "super-model into SUPERNET_DIR instead of searching."),
    preset: Optional[str] = typer.Option(None, help="--train-supernet: super-model preset (the maximal shape)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="--train-supernet: recipe YAML."),
    corpus: Optional[str] = typer.Option(None, help="--train-supernet: corpus (or --task-train/--task-val files)."),
    max_steps: Optional[int] = typer.Option(None, help="--train-supernet: optimizer steps."),
    resume: Optional[str] = typer.Option(None, help="--train-supernet: 'auto' continues the run in SUPERNET_DIR "
                                                     "(default: never)."),
    layers: Optional[str] = typer.Option(None, help="Space: layers min:max (default 1:L)."),
    hidden: Optional[str] = typer.Option(None, help="Space: hidden min:max:step (default d/4:d:heads)."),
    heads: Optional[str] = typer.Option(None, help="Space: head counts, e.g. 12 or 4,8,12 (default the model's)."),
    ffn: Optional[str] = typer.Option(None, help="Space: FFN min:max:step (default d_ff/8:d_ff:d_ff/16)."),
    max_latency_ms: Optional[float] = typer.Option(None, help="Search: predicted latency bound (batch 1, seq 128, "
                                                              "1 thread)."),
    min_latency_ms: Optional[float] = typer.Option(None, help="Search: optional lower bound (AutoTinyBERT's window)."),
    evals: int = typer.Option(50, help="Search: sub-model evaluations (equal for every strategy)."),
    strategy: str = typer.Option("evolutionary", help="Search: evolutionary | random | both (same --evals each; "
                                                      "the best of evolutionary is extracted)."),
    out: Optional[Path] = typer.Option(None, help="Search: checkpoint directory for the chosen sub-model "
                                                  "(+ search.json)."),
    latency_samples: int = typer.Option(100, help="Search: archs whose latency is measured to fit the predictor."),
    latency_runs: int = typer.Option(10, help="Search: timed runs per arch (median)."),
    eval_batches: int = typer.Option(4, help="Search: dev batches per fitness evaluation."),
    seed: int = typer.Option(0),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """AutoTinyBERT: train a weight-shared super-model, then search it under a latency bound.

    Step 1, train: `morphlm search arch SUP --train-supernet --preset small-bert --corpus stdlib --max-steps 500
    --layers 1:4 --hidden 64:256:16 --heads 4 --ffn 128:1024:64` (any train setting works too, e.g. --lr 5e-4,
    --init DIR for a same-shape start). Each step trains one sampled sub-architecture (leading slices).
    The hidden sizes must be divisible by the head counts (head_dim = d/heads).

    Step 2, search: `morphlm search arch SUP --max-latency-ms 5 --evals 50 --out DIR --strategy both`
    measures --latency-samples archs on this machine (batch 1, seq 128, 1 thread), fits the latency predictor
    (prints held-out MAPE), searches with the inherited weights' dev metric as fitness and writes the chosen
    sub-model as a standalone checkpoint; lineage.json and search.json record everything."""
    _setup_logging(verbose)
    if train_supernet:
        _train_supernet(ctx, supernet_dir, preset, config, corpus, max_steps, resume, layers, hidden, heads, ffn)
    else:
        if ctx.args:
            raise typer.BadParameter(f"unexpected option(s) {ctx.args}; training settings need --train-supernet")
        if max_latency_ms is None or out is None:
            raise typer.BadParameter("searching needs --max-latency-ms and --out (or pass --train-supernet)")
        _search(supernet_dir, max_latency_ms, min_latency_ms, evals, strategy, out, latency_samples, latency_runs,
                eval_batches, seed)


def _space_from(cfg, layers, hidden, heads, ffn):
    from ..compress.nas import SearchSpace

    return SearchSpace.for_model(cfg, layers=_ints(layers, "layers"), hidden=_ints(hidden, "hidden"),
                                 heads=_ints(heads, "heads"), ffn=_ints(ffn, "ffn"))


def _train_supernet(ctx, supernet_dir, preset, config, corpus, max_steps, resume, layers, hidden, heads, ffn) -> None:
    import dataclasses

    import torch

    from ..compress import CompressionError
    from ..compress.nas import train_supernet
    from ..model import TransformerLM
    from ..train import checkpoint as ckpt
    from ..train.run import build_data, build_spec

    own = [f for p in ctx.command.params for f in getattr(p, "opts", [])] + ["--init"]
    extra = _parse_extra(ctx.args)
    init = extra.pop("init", None)  # a same-shape start: a checkpoint dir, not a dataclass field
    overrides = typed_settings(extra, _TRAIN_FIELDS, own=own, what="option or training setting", null=NULL)
    if init is not None:
        overrides["init"] = init
    overrides.update({k: v for k, v in dict(corpus=corpus, max_steps=max_steps, out_dir=str(supernet_dir),
                                            resume=resume).items() if v is not None})
    spec = build_spec(preset, config, overrides)
    ckpt.claim_output_dir(supernet_dir, "supernet", inputs=[("--init", spec.init)], resume=resume == "auto",
                          error=CompressionError)
    space = _space_from(spec.model, layers, hidden, heads, ffn)
    tokenizer = None
    if ckpt.has_trainer_state(supernet_dir) and resume == "auto":
        saved = (ckpt.read_trainer_json(supernet_dir) or {}).get("supernet_space")
        if saved is not None and saved != json.loads(json.dumps(space.to_dict())):
            raise CompressionError(f"{supernet_dir} was trained on another search space; resume with the same "
                                   f"--layers/--hidden/--heads/--ffn and model settings, or use another directory")
        tokenizer = ckpt.open_tokenizer(supernet_dir)
    torch.manual_seed(spec.train.seed)
    model = TransformerLM(spec.model)
    lineage = {"preset": spec.model.name, "data": dataclasses.asdict(spec.data), "parents": []}
    if spec.init:  # same-shape start (e.g. a pretrained model of the maximal shape); its tokenizer
        from ..train.run import _load_init

        init_tok = _load_init(model, spec.init)
        tokenizer = tokenizer or init_tok
        lineage["parents"].append(ckpt.parent_record(spec.init, "init"))
    tokenizer, data, fps = build_data(spec, tokenizer)
    res = train_supernet(model, data, spec.train, space, tokenizer_json=tokenizer.to_json_str(), lineage=lineage,
                         extra_state={**fps, "data_spec": dataclasses.asdict(spec.data)})
    typer.echo(f"super-model: step {res.steps}, {res.flops:.3g} FLOPs, {len(space.candidates())} candidate archs"
               + (f", val_loss {res.val_loss:.4f}" if res.val_loss is not None else "") + f" → {supernet_dir}")


def _search(supernet_dir, max_latency_ms, min_latency_ms, evals, strategy, out, latency_samples, latency_runs,
            eval_batches, seed) -> None:
    from ..bench.common import write_json
    from ..provenance import metadata
    from ..compress import CompressionError
    from ..compress.extract import run_batches
    from ..train.latency import measure_latency
    from ..compress.nas import (SearchSpace, evolutionary_search, fit_latency_predictor, measure_arch_latencies,
                                proxy_fitness, random_search, subnet)
    from ..train import checkpoint as ckpt

    if strategy not in ("evolutionary", "random", "both"):
        raise CompressionError(f"--strategy {strategy!r}: evolutionary | random | both")
    ckpt.claim_output_dir(out, "search-arch", inputs=[("super-model", supernet_dir)], error=CompressionError)
    lineage = ckpt.read_lineage(supernet_dir) or {}
    if lineage.get("verb") != "supernet" or "space" not in lineage:
        raise CompressionError(f"{supernet_dir} is not a super-model directory (its lineage has no search space); "
                               f"train one with `morphlm search arch {supernet_dir} --train-supernet ...`")
    space = SearchSpace.from_dict(lineage["space"])
    model, _, source = ckpt.open_checkpoint(supernet_dir, role="super-model", error=CompressionError)
    _, data = run_batches(supernet_dir, model.config, seed=seed)
    batches = data.val_batches()[:max(1, eval_batches)]

    cands = space.candidates()
    sample = random.Random(seed).sample(cands, min(latency_samples, len(cands)))
    ms = measure_arch_latencies(space, sample, runs=latency_runs)
    predictor, report = fit_latency_predictor(sample, ms, seed=seed)
    hold = report["holdout_mape"]
    typer.echo(f"latency predictor: {report['n_train']} train / {report['n_holdout']} held-out archs, MAPE "
               f"train {report['train_mape']:.1f}%" + (f", held-out {hold:.1f}%" if hold is not None else ""))
    fitness = proxy_fitness(model, batches)
    results = {}
    if strategy in ("evolutionary", "both"):
        results["evolutionary"] = evolutionary_search(space, fitness, predictor, max_latency_ms, evals, seed,
                                                      min_latency_ms=min_latency_ms, progress=True)
    if strategy in ("random", "both"):
        results["random"] = random_search(space, fitness, predictor, max_latency_ms, evals, seed,
                                          min_latency_ms=min_latency_ms, progress=True)
    chosen_by = "evolutionary" if "evolutionary" in results else "random"
    best = results[chosen_by]["best_arch"]
    student = subnet(model, best)
    measured = measure_latency(student, seq_len=min(128, student.config.max_seq_len), threads=1, warmup=3,
                               runs=max(latency_runs, 20))
    summary = {name: {"best_arch": r["best_arch"].to_dict(), "best_fitness": r["best_fitness"],
                      "n_evals": r["n_evals"]} for name, r in results.items()}
    record = {
        "verb": "search-arch", "strategy": strategy, "chosen_by": chosen_by, "arch": best.to_dict(),
        "fitness": results[chosen_by]["best_fitness"], "predicted_ms": predictor.predict(best),
        "measured_ms": measured["median_ms"], "max_latency_ms": max_latency_ms, "min_latency_ms": min_latency_ms,
        "evals": evals, "predictor": report, "searches": summary, "flops": 0.0, "space": space.to_dict(),
        "parents": [source.parent("supernet")],
    }
    if "data" in lineage:
        record["data"] = lineage["data"]
    ckpt.save_checkpoint(out, student.state_dict(), student.config,
                         tokenizer_json=source.tokenizer_json, lineage=record)
    write_json(Path(out) / "search.json", {
        "metadata": metadata(), **{k: v for k, v in record.items() if k != "parents"},
        "latency_samples": [{"arch": a.to_dict(), "ms": m} for a, m in zip(sample, ms)],
        "predictor_state": predictor.to_dict(),
        "history": {name: r["history"] for name, r in results.items()}})
    for name, s in summary.items():
        typer.echo(f"{name}: best {s['best_arch']} fitness {s['best_fitness']:.4f} after {s['n_evals']} evals")
    typer.echo(f"chose {best.to_dict()}: predicted {record['predicted_ms']:.2f} ms, measured "
               f"{record['measured_ms']:.2f} ms (bound {max_latency_ms:g}) → {out}")
