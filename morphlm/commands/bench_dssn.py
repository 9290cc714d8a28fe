"""`morphlm bench dssn`: the depth-scaled sandwich norm benchmark (morphlm/bench/dssn.py) from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .base import _setup_logging, bench_app, friendly
from .options import verb, with_config


@bench_app.command("dssn", cls=verb())
@with_config
@friendly
def bench_dssn(
    quick: bool = typer.Option(False, "--quick", help="One seed at a small size (< 60 s on 2 cores): a smoke test, "
                                                     "written to dssn-quick.json."),
    corpus: Optional[str] = typer.Option(
        None, help="Corpus (name, folder, glob). Default: gutenberg/ of the data folder ($MORPHLM_DATA) when present, "
                   "else shakespeare. Train and validation are split by whole books."),
    max_bytes: Optional[int] = typer.Option(None, help="Cap on corpus bytes (whole documents in order)."),
    seeds: Optional[int] = typer.Option(None, help="Number of seeds (default 3; --quick 1)."),
    steps: Optional[int] = typer.Option(None, "--max-steps", help="Training steps of every run."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate of every arm (default 3e-2, chosen so that "
                                                  "pre-norm spikes)."),
    n_layers: Optional[int] = typer.Option(None, "--n-layers", help="Depth of every arm (default 32; --quick 12)."),
    spike_margin: Optional[float] = typer.Option(
        None, help="Spike margin in nats: a step whose loss exceeds the running minimum of the moving average of "
                   "the earlier losses by more is a spike (default 0.5)."),
    spike_window: Optional[int] = typer.Option(
        None, help="Steps in the moving average whose running minimum is the spike reference (default 10)."),
    precision: Optional[str] = typer.Option(
        None, help="auto (default: bf16 autocast on CPUs with native bf16, else fp32) | fp32 | bf16."),
    workers: Optional[int] = typer.Option(None, help="Parallel single-threaded runs (default min(cores, 2))."),
    out: Optional[Path] = typer.Option(
        None, help="Results JSON (default benchmarks/results/dssn.json, dssn-quick.json with --quick; "
                   "$MORPHLM_RESULTS moves the folder). The plot is written next to it (.png)."),
    work_dir: Optional[Path] = typer.Option(
        None, help="Cache of finished (arm, seed) runs; a rerun reuses them and resumes unfinished runs. Default "
                   "$MORPHLM_CACHE/dssn-bench."),
    table: bool = typer.Option(False, "--table", help="Print the README markdown table of an existing results JSON "
                                                     "and exit (runs nothing)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Train deep, narrow causal LMs with pre-norm, plain sandwich norm and the depth-scaled sandwich norm with
    TinyInit (Pangu Ultra) at a high learning rate on the same tokens, for several seeds, and report loss spikes,
    final validation loss on held-out books and the gradient-norm traces."""
    _setup_logging(verbose)
    from ..bench import dssn as db
    from ..bench.common import results_table

    if table:
        path = out or db.results_path(db.quick_config() if quick else db.full_config())
        typer.echo(results_table(path, db.markdown_table, "dssn", db.BenchError))
        return
    changes: dict = {}
    if corpus is not None:
        changes["corpus"] = corpus
    if max_bytes is not None:
        changes["max_bytes"] = max_bytes
    if seeds is not None:
        if seeds < 1:
            raise db.BenchError(f"--seeds {seeds}: need at least 1")
        changes["seeds"] = list(range(seeds))
    for name, value in (("steps", steps), ("lr", lr), ("n_layers", n_layers), ("spike_margin", spike_margin),
                        ("spike_window", spike_window), ("precision", precision)):
        if value is not None:
            changes[name] = value
    cfg = db.quick_config(**changes) if quick else db.full_config(**changes)
    if steps is not None:
        if cfg.eval_every > steps:
            cfg.eval_every = max(steps // 4, 1)
        cfg.warmup_steps = min(cfg.warmup_steps, max(cfg.steps // 10, 1))
    results = db.run_benchmark(cfg, out_json=out, work_dir=work_dir, workers=workers)
    typer.echo(db.markdown_table(results))
    typer.echo(f"\nwrote {out or db.results_path(cfg)} and {results.get('plot')}")
