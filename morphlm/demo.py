"""`make demo` / `morphlm demo`: train a small model on the embedded stdlib corpus, evaluate it, sample
from it and plot its loss — the whole core pipeline in about three minutes on two CPU cores."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from .train.metrics import plot_curves
from .train.run import build_spec, eval_run, sample_texts, train_run

DEMO_MODEL = dict(d_model=192, n_layers=4, n_heads=4, vocab_size=2048, max_seq_len=128)
PROMPTS = ["def ", "import os\n", "class "]


def run_demo(out: str | Path = "runs/demo", steps: int = 1500) -> dict:
    out = Path(out)
    t0 = time.time()
    typer.secho(f"[1/4] training a {DEMO_MODEL['n_layers']}-layer, d={DEMO_MODEL['d_model']} GPT on the Python "
                f"standard library ({steps} steps; rerunning resumes) ...", bold=True)
    spec = build_spec("tiny", overrides=dict(
        **DEMO_MODEL, corpus="stdlib", max_bytes=3_000_000, seq_len=128, batch_size=16, max_steps=steps,
        schedule_steps=steps, warmup_steps=30, lr=2e-3, eval_every=max(steps // 6, 1), save_every=max(steps // 6, 1),
        out_dir=str(out), resume="auto", name="demo"))
    result = train_run(spec)
    typer.secho("[2/4] evaluating ...", bold=True)
    metrics = eval_run(out)
    typer.echo(f"      val_loss {metrics['val_loss']:.3f} nats/token, perplexity {metrics['perplexity']:.1f}")
    typer.secho("[3/4] sampling ...", bold=True)
    for prompt in PROMPTS:
        text = sample_texts(out, prompt, max_new_tokens=60, temperature=0.7, seed=0)[0]
        typer.echo("      " + text.replace("\n", "\n      "))
        typer.echo("      " + "-" * 40)
    typer.secho("[4/4] plotting ...", bold=True)
    png = plot_curves({"demo": out}, out / "loss.png", x="step", title="morphlm demo: GPT on the stdlib corpus")
    typer.secho(f"\ndone in {time.time() - t0:.0f} s. {result.tokens:,} tokens, {result.flops:.3g} training FLOPs.",
                fg="green")
    typer.echo(f"  checkpoint : {out}/ (model.safetensors, config.json, tokenizer.json, state/)")
    typer.echo(f"  metrics    : {out}/metrics.jsonl")
    typer.echo(f"  loss curve : {png}")
    typer.echo(f"  try        : morphlm generate {out} --prompt 'def main(' ; morphlm eval {out} --json")
    return metrics
