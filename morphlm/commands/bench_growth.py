"""`morphlm bench growth`: the growth benchmark (morphlm/bench/growth.py) from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .base import _setup_logging, bench_app, friendly
from .bench_options import (comma_list, config_changes, max_bytes_option, print_table, run_and_report, seeds_option,
                            table_option, verbose_option, workers_option)
from .options import verb, with_config


@bench_app.command("growth", cls=verb({"--steps": "--max-steps"}))
@with_config
@friendly
def bench_growth(
    quick: bool = typer.Option(False, "--quick", help="One seed at a tiny size (< 90 s on 2 cores): a smoke test."),
    objective: str = typer.Option("causal", help="causal (GPT-style) | mlm (BERT-style masked LM)."),
    corpus: Optional[str] = typer.Option(
        None, help="Corpus (name, folder, glob). Default: gutenberg/ of the data folder ($MORPHLM_DATA, default "
                   "../shared/data) when present, else shakespeare. "
                   "Train/validation are split by whole documents (one per book/file)."),
    max_bytes: Optional[int] = max_bytes_option(),
    seeds: Optional[int] = seeds_option(),
    methods: Optional[str] = typer.Option(
        None, help="Comma-separated arms (default all): fpi,aki,stack,interpolate,msg,ligo,mango,two-stage,apollo,mslt. "
                   "scratch always runs."),
    steps: Optional[int] = typer.Option(
        None, "--max-steps", help="Training steps of every target run (scratch, grown, scheduled); sources train half as many."),
    workers: Optional[int] = workers_option(),
    out: Optional[Path] = typer.Option(
        None, help="Results JSON (default benchmarks/results/growth.json; growth-quick.json with --quick, "
                   "growth-mlm*.json with --objective mlm; "
                   "$MORPHLM_RESULTS moves the folder). The plot is written next to it (.png)."),
    work_dir: Optional[Path] = typer.Option(
        None, help="Cache of sources and finished (arm, seed) runs; a rerun reuses them. Default "
                   "$MORPHLM_CACHE/growth-bench."),
    table: bool = table_option(),
    verbose: bool = verbose_option(),
) -> None:
    """Train one target model from scratch and from every growth method (same data order, eval set and schedule
    for each), for several seeds, and report the FLOPs each needs to reach the scratch run's final validation
    loss: saving = 1 - C_method/C_scratch, with and without the source model's pretraining cost."""
    _setup_logging(verbose)
    from ..bench import growth as gb

    if table:
        print_table("growth", gb, (gb.quick_config if quick else gb.full_config)(objective=objective), out)
        return
    changes = config_changes(gb.BenchError, seeds, objective=objective, corpus=corpus, max_bytes=max_bytes,
                             methods=comma_list(methods), steps=steps)
    if steps is not None:
        changes["source_steps"] = max(steps // 2, 1)  # both presets train sources for half the target's steps
    cfg = gb.quick_config(**changes) if quick else gb.full_config(**changes)
    if steps is not None and cfg.eval_every > steps:
        cfg.eval_every = max(steps // 10, 1)
    run_and_report(gb, cfg, out, work_dir, workers)
