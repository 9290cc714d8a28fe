"""`morphlm prompt-tune` (soft-prompt tuning of a frozen model, plain or FPT) and `morphlm bench fpt`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .base import _setup_logging, app, bench_app, friendly
from .options import verb, with_config


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"--stages {text!r}: use comma-separated fractions such as 0.25,0.5,0.75") from None


@app.command("prompt-tune", cls=verb({"--steps": "--max-steps", "--max-len": "--seq-len"}))
@with_config
@friendly
def prompt_tune(
    model_dir: Path = typer.Argument(..., help="Checkpoint directory of a pretrained causal (lm) or masked-LM model."),
    task_train: Path = typer.Option(..., "--task-train", help="Training examples: TSV/CSV/JSONL with a label column."),
    task_val: Path = typer.Option(..., "--task-val", help="Validation examples (same columns)."),
    out: Path = typer.Option(..., "--out", help="Directory to write (prompt.safetensors, prompt.json, lineage.json)."),
    prompt_len: int = typer.Option(20, "--prompt-len", help="Number of soft-prompt vectors P."),
    progressive: bool = typer.Option(False, "--progressive/--plain",
                                     help="FPT: start on partial models and grow back to the full model."),
    partial: str = typer.Option("compound", help="Partial models for --progressive: layers | ffn | compound."),
    stages: str = typer.Option("0.25,0.5,0.75", "--stages", help="Fractions of layers/FFN neurons kept per partial stage."),
    stage_steps: Optional[int] = typer.Option(None, "--stage-steps",
                                              help="Steps per partial stage (default: 1/5 of --max-steps each)."),
    steps: int = typer.Option(300, "--max-steps", help="Total optimizer steps (all stages together)."),
    lr: float = typer.Option(3e-2, help="Constant learning rate of the prompt (AdamW, no weight decay)."),
    batch_size: int = typer.Option(32, "--batch-size"),
    max_len: int = typer.Option(64, "--seq-len", help="Tokens per example incl. the cls/sep tokens (prompt not "
                                                      "included)."),
    reading: str = typer.Option("auto", help="auto | mlm (verbalizer at a <mask>) | causal (next token after the text)."),
    verbalizer: Optional[str] = typer.Option(None, help="Comma-separated label word per class, in label order "
                                                        "(default: the label names, e.g. 0,1)."),
    eval_every: int = typer.Option(50, "--eval-every", help="Evaluate the full model with the prompt every N steps."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Tune a soft prompt (P x d_model vectors, nothing else) for a classification task on a FROZEN model.
    With --progressive, FPT: partial models first (stage by stage), then the full model, recycling the prompt."""
    _setup_logging(verbose)
    from ..grow.fpt import prompt_tune_checkpoint
    from ..grow.prompt_tuning import PromptTuneConfig

    cfg = PromptTuneConfig(prompt_len=prompt_len, steps=steps, lr=lr, batch_size=batch_size, max_len=max_len,
                           eval_every=eval_every, seed=seed, reading=reading,
                           label_words=[w for w in verbalizer.split(",")] if verbalizer else None,
                           progressive=progressive, partial=partial, fractions=_fractions(stages),
                           stage_steps=stage_steps, device=device)
    res = prompt_tune_checkpoint(model_dir, task_train, task_val, cfg, out)
    acc = res.final.get("val_accuracy")
    if as_json:
        import json

        typer.echo(json.dumps({"stages": len(res.stages), "flops": res.flops, "train_time_s": res.train_time_s,
                               "val_accuracy": acc, "final": res.final, "out_dir": str(out)}, default=str))
        return
    typer.echo(f"done: {'FPT' if progressive else 'plain'} prompt tuning, {len(res.stages)} stage(s), "
               f"{res.flops:.3g} FLOPs, {res.train_time_s:.1f} s training, val accuracy {acc:.4f} → {out}")


@bench_app.command("fpt", cls=verb())
@with_config
@friendly
def bench_fpt(
    quick: bool = typer.Option(False, "--quick", help="Small sizes, 1 seed: runs in about a minute on 2 cores."),
    size: Optional[str] = typer.Option(None, help="full | quick | tiny (tiny: a few seconds, for tests). "
                                                  "Default: quick with --quick, else full."),
    seeds: Optional[int] = typer.Option(None, help="Number of seeds (default 3 full, 1 quick/tiny)."),
    model: Optional[Path] = typer.Option(None, help="Use this pretrained checkpoint instead of pretraining one."),
    objective: str = typer.Option("causal", help="Pretraining objective of the frozen model: causal | mlm."),
    corpus: Optional[str] = typer.Option(None, help="Pretraining corpus: task (default: the task's unlabelled "
                                                    "training texts), gutenberg, or any corpus spec/path."),
    task_train: Optional[Path] = typer.Option(None, "--task-train", help="Default: glue-sst2/train.tsv of the data folder "
                                                                       "($MORPHLM_DATA, default ../shared/data)."),
    task_val: Optional[Path] = typer.Option(None, "--task-val", help="Default: glue-sst2/dev.tsv of the data folder "
                                                                     "($MORPHLM_DATA, default ../shared/data)."),
    out: Optional[Path] = typer.Option(None, help="Results JSON (default benchmarks/results/fpt.json)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Plain prompt tuning vs FPT on SST-2: FLOPs and wall time to reach plain prompt tuning's final dev
    accuracy. Writes benchmarks/results/fpt.json and fpt.png."""
    _setup_logging(verbose)
    from ..bench.fpt import run

    res = run(size=size or ("quick" if quick else "full"), seeds=seeds, model_dir=model, objective=objective,
              corpus=corpus, task_train=task_train, task_val=task_val, out=out)
    s = res["summary"]
    if not s["target_above_majority"]:
        typer.secho(f"warning: {s['note']}", fg="yellow", err=True)
    typer.echo(f"plain final dev accuracy {s['plain_final_accuracy_mean']:.4f} (majority class "
               f"{s['majority_class_accuracy']:.4f}); FPT reached it in "
               f"{s['fpt_reached']}/{s['seeds']} seeds; FLOPs saving {s['flops_saving_mean']} , wall saving "
               f"{s['wall_saving_mean']} → {res['path']}")
