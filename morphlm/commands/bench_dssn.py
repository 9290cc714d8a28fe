"""`morphlm bench dssn`: the depth-scaled sandwich norm benchmark (morphlm/bench/dssn.py) from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .base import _setup_logging, bench_app, friendly
from .bench_options import (config_changes, corpus_option, max_bytes_option, out_option, precision_option,
                            print_table, run_and_report, seeds_option, table_option, verbose_option, work_dir_option,
                            workers_option)
from .options import verb, with_config


@bench_app.command("dssn", cls=verb())
@with_config
@friendly
def bench_dssn(
    quick: bool = typer.Option(False, "--quick", help="One seed at a small size (< 60 s on 2 cores): a smoke test, "
                                                     "written to dssn-quick.json."),
    corpus: Optional[str] = corpus_option(),
    max_bytes: Optional[int] = max_bytes_option(),
    seeds: Optional[int] = seeds_option(),
    steps: Optional[int] = typer.Option(None, "--max-steps", help="Training steps of every run."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate of every arm (default 3e-2, chosen so that "
                                                  "pre-norm spikes)."),
    n_layers: Optional[int] = typer.Option(None, "--n-layers", help="Depth of every arm (default 32; --quick 12)."),
    spike_margin: Optional[float] = typer.Option(
        None, help="Spike margin in nats: a step whose loss exceeds the running minimum of the moving average of "
                   "the earlier losses by more is a spike (default 0.5)."),
    spike_window: Optional[int] = typer.Option(
        None, help="Steps in the moving average whose running minimum is the spike reference (default 10)."),
    precision: Optional[str] = precision_option(),
    workers: Optional[int] = workers_option(),
    out: Optional[Path] = out_option("dssn"),
    work_dir: Optional[Path] = work_dir_option("dssn-bench", "finished (arm, seed) runs"),
    table: bool = table_option(),
    verbose: bool = verbose_option(),
) -> None:
    """Train deep, narrow causal LMs with pre-norm, plain sandwich norm and the depth-scaled sandwich norm with
    TinyInit (Pangu Ultra) at a high learning rate on the same tokens, for several seeds, and report loss spikes,
    final validation loss on held-out books and the gradient-norm traces."""
    _setup_logging(verbose)
    from ..bench import dssn as db

    if table:
        print_table("dssn", db, db.quick_config() if quick else db.full_config(), out)
        return
    changes = config_changes(db.BenchError, seeds, corpus=corpus, max_bytes=max_bytes, steps=steps, lr=lr,
                             n_layers=n_layers, spike_margin=spike_margin, spike_window=spike_window,
                             precision=precision)
    cfg = db.quick_config(**changes) if quick else db.full_config(**changes)
    if steps is not None:
        if cfg.eval_every > steps:
            cfg.eval_every = max(steps // 4, 1)
        cfg.warmup_steps = min(cfg.warmup_steps, max(cfg.steps // 10, 1))
    run_and_report(db, cfg, out, work_dir, workers)
