"""`morphlm bench moe`: the mixture-of-experts benchmark (morphlm/bench/moe.py) from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .base import _setup_logging, bench_app, friendly
from .bench_options import (comma_list, config_changes, corpus_option, max_bytes_option, out_option, precision_option,
                            print_table, run_and_report, seeds_option, table_option, verbose_option, work_dir_option,
                            workers_option)
from .options import verb, with_config


@bench_app.command("moe", cls=verb())
@with_config
@friendly
def bench_moe(
    quick: bool = typer.Option(False, "--quick", help="One seed at a tiny size, every arm (< 60 s on 2 cores): a smoke "
                                                     "test, written to moe-quick.json."),
    corpus: Optional[str] = corpus_option(),
    max_bytes: Optional[int] = max_bytes_option(),
    seeds: Optional[int] = seeds_option(),
    arms: Optional[str] = typer.Option(
        None, help="Comma-separated arms (default all): dense,vanilla,loss-free,unipool,unipool-half,loopmoe. "
                   "vanilla always runs."),
    steps: Optional[int] = typer.Option(None, "--max-steps", help="Training steps of every run."),
    precision: Optional[str] = precision_option(),
    workers: Optional[int] = workers_option(),
    out: Optional[Path] = out_option("moe"),
    work_dir: Optional[Path] = work_dir_option("moe-bench", "finished (arm, seed) runs and measurements"),
    table: bool = table_option(),
    verbose: bool = verbose_option(),
) -> None:
    """Train dense, vanilla MoE, loss-free MoE, UniPool (full and reduced pool) and LoopMoE models at matched active
    FLOPs per token on the same tokens, for several seeds, and report validation loss on held-out books, expert
    load balance, our MoE layer's speed against Hugging Face's and the simulator's step-time error."""
    _setup_logging(verbose)
    from ..bench import moe as mb

    if table:
        print_table("moe", mb, mb.quick_config() if quick else mb.full_config(), out)
        return
    changes = config_changes(mb.BenchError, seeds, corpus=corpus, max_bytes=max_bytes, arms=comma_list(arms),
                             steps=steps, precision=precision)
    cfg = mb.quick_config(**changes) if quick else mb.full_config(**changes)
    if steps is not None and cfg.eval_every > steps:
        cfg.eval_every = max(steps // 4, 1)
    cfg.warmup_steps = min(cfg.warmup_steps, max(cfg.steps // 10, 1)) if steps is not None else cfg.warmup_steps
    run_and_report(mb, cfg, out, work_dir, workers)
