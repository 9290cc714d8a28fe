"""`morphlm bench moe`: the mixture-of-experts benchmark (morphlm/bench/moe.py) from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .base import _setup_logging, bench_app, friendly
from .options import verb, with_config


@bench_app.command("moe", cls=verb())
@with_config
@friendly
def bench_moe(
    quick: bool = typer.Option(False, "--quick", help="One seed at a tiny size, every arm (< 60 s on 2 cores): a smoke "
                                                     "test, written to moe-quick.json."),
    corpus: Optional[str] = typer.Option(
        None, help="Corpus (name, folder, glob). Default: gutenberg/ of the data folder ($MORPHLM_DATA) when present, "
                   "else shakespeare. Train and validation are split by whole books."),
    max_bytes: Optional[int] = typer.Option(None, help="Cap on corpus bytes (whole documents in order)."),
    seeds: Optional[int] = typer.Option(None, help="Number of seeds (default 3; --quick 1)."),
    arms: Optional[str] = typer.Option(
        None, help="Comma-separated arms (default all): dense,vanilla,loss-free,unipool,unipool-half,loopmoe. "
                   "vanilla always runs."),
    steps: Optional[int] = typer.Option(None, "--max-steps", help="Training steps of every run."),
    precision: Optional[str] = typer.Option(
        None, help="auto (default: bf16 autocast on CPUs with native bf16, else fp32) | fp32 | bf16."),
    workers: Optional[int] = typer.Option(None, help="Parallel single-threaded runs (default min(cores, 2))."),
    out: Optional[Path] = typer.Option(
        None, help="Results JSON (default benchmarks/results/moe.json, moe-quick.json with --quick; $MORPHLM_RESULTS "
                   "moves the folder). The plot is written next to it (.png)."),
    work_dir: Optional[Path] = typer.Option(
        None, help="Cache of finished (arm, seed) runs and measurements; a rerun reuses them and resumes unfinished "
                   "runs. Default $MORPHLM_CACHE/moe-bench."),
    table: bool = typer.Option(False, "--table", help="Print the README markdown table of an existing results JSON "
                                                     "and exit (runs nothing)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train dense, vanilla MoE, loss-free MoE, UniPool (full and reduced pool) and LoopMoE models at matched active
    FLOPs per token on the same tokens, for several seeds, and report validation loss on held-out books, expert
    load balance, our MoE layer's speed against Hugging Face's and the simulator's step-time error."""
    _setup_logging(verbose)
    import json

    from ..bench import moe as mb

    if table:
        path = out or mb.results_path(mb.quick_config() if quick else mb.full_config())
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} does not exist; run `morphlm bench moe` first (or pass --out FILE)")
        typer.echo(mb.markdown_table(json.loads(Path(path).read_text())))
        return
    changes: dict = {}
    if corpus is not None:
        changes["corpus"] = corpus
    if max_bytes is not None:
        changes["max_bytes"] = max_bytes
    if seeds is not None:
        if seeds < 1:
            raise mb.BenchError(f"--seeds {seeds}: need at least 1")
        changes["seeds"] = list(range(seeds))
    if arms:
        changes["arms"] = [a.strip() for a in arms.split(",") if a.strip()]
    if steps is not None:
        changes["steps"] = steps
    if precision is not None:
        changes["precision"] = precision
    cfg = mb.quick_config(**changes) if quick else mb.full_config(**changes)
    if steps is not None and cfg.eval_every > steps:
        cfg.eval_every = max(steps // 4, 1)
    cfg.warmup_steps = min(cfg.warmup_steps, max(cfg.steps // 10, 1)) if steps is not None else cfg.warmup_steps
    results = mb.run_benchmark(cfg, out_json=out, work_dir=work_dir, workers=workers)
    typer.echo(mb.markdown_table(results))
    typer.echo(f"\nwrote {out or mb.results_path(cfg)} and {results.get('plot')}")
