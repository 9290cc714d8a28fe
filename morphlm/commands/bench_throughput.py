"""``morphlm bench throughput``: training throughput of morphlm vs Hugging Face (morphlm/bench/throughput.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .base import _setup_logging, bench_app, friendly
from .options import verb, with_config


@bench_app.command("throughput", cls=verb({"--batch": "--batch-size", "--seq": "--seq-len",
                                           "--warmup": "--warmup-steps", "--steps": "--timed-steps"}))
@with_config
@friendly
def bench_throughput(
    device: str = typer.Option("auto", help="auto | cpu | cuda (a CPU and a GPU run fill their own sections)."),
    quick: bool = typer.Option(False, "--quick", help="Tiny sizes, one short round (smoke test); writes to a "
                                                      "temporary file unless --out is given, never to the "
                                                      "committed results."),
    out: Optional[Path] = typer.Option(None, help="Results JSON (default benchmarks/results/throughput.json; a CPU "
                                                  "and a GPU run fill their own sections of it)."),
    presets: Optional[str] = typer.Option(None, help="Comma-separated model presets (default per device: "
                                                     "gpt-20m,llama-20m on CPU, gpt2-small on CUDA)."),
    batch: Optional[int] = typer.Option(None, "--batch-size", help="Sequences per optimizer step."),
    seq: Optional[int] = typer.Option(None, "--seq-len", help="Sequence length."),
    warmup: Optional[int] = typer.Option(None, "--warmup-steps", help="Discarded steps per measurement."),
    steps: Optional[int] = typer.Option(None, "--timed-steps", help="Timed steps per measurement."),
    rounds: Optional[int] = typer.Option(None, help="Interleaved morphlm/HF rounds (the median is reported)."),
    modes: Optional[str] = typer.Option(None, help="Comma-separated: eager,compiled (default: eager on CPU, both "
                                                   "on CUDA)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: the usable cores)."),
    variants: bool = typer.Option(False, "--variants", help="CUDA: extra morphlm runs (accumulation, cuDNN "
                                                            "attention, the model outside fit())."),
    grad_clip: Optional[float] = typer.Option(None, "--grad-clip", help="Gradient-norm clipping on both sides "
                                                                        "(0 = off; default: fit's default)."),
    seed: int = typer.Option(0, help="Seed of the weights and the synthetic tokens."),
    table: bool = typer.Option(False, "--table", help="Only print the README markdown tables of an existing results "
                                                      "JSON (--out or the default)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train the same network with morphlm's fit() and with the plain Hugging Face loop, same weights, batch and
    update rule, and report tokens/s (and MFU on a GPU) of each; writes the results JSON and prints its table."""
    from ..bench import throughput as tp

    _setup_logging(verbose)
    if table:
        typer.echo(tp.table(out))
        return
    if device == "auto":  # the profile is per device kind: pick the one this machine has
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    res = tp.run(device=device, quick=quick, out=out, presets=tp.csv_list(presets), batch=batch, seq=seq,
                 warmup=warmup, steps=steps, rounds=rounds, modes=tp.csv_list(modes), threads=threads, variants=variants,
                 grad_clip=tp.DEFAULT_GRAD_CLIP if grad_clip is None else grad_clip, seed=seed)
    typer.echo(tp.render_table(res))
    typer.echo(f"wrote {res['path']}")
