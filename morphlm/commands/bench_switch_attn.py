"""`morphlm bench switch-attn`: the Switch Attention benchmark (morphlm/bench/switch_attn.py) from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .base import _setup_logging, bench_app, friendly
from .options import verb, with_config


@bench_app.command("switch-attn", cls=verb())
@with_config
@friendly
def bench_switch_attn(
    quick: bool = typer.Option(False, "--quick", help="One seed at a small size (context 256, window 32), every "
                                                     "arm: a smoke test, written to switch-attn-quick.json."),
    corpus: Optional[str] = typer.Option(
        None, help="Corpus (name, folder, glob). Default: gutenberg/ of the data folder ($MORPHLM_DATA) when present, "
                   "else shakespeare. Train and validation are split by whole books."),
    max_bytes: Optional[int] = typer.Option(None, help="Cap on corpus bytes (whole documents in order)."),
    seeds: Optional[int] = typer.Option(None, help="Number of seeds (default 3; --quick 1)."),
    steps: Optional[int] = typer.Option(None, "--max-steps", help="Continuation steps of every arm."),
    pretrain_steps: Optional[int] = typer.Option(None, help="Steps of the shared full-attention pretraining."),
    precision: Optional[str] = typer.Option(
        None, help="auto (default: bf16 autocast on CPUs with native bf16, else fp32) | fp32 | bf16."),
    workers: Optional[int] = typer.Option(None, help="Parallel single-threaded runs (default min(cores, 2))."),
    out: Optional[Path] = typer.Option(
        None, help="Results JSON (default benchmarks/results/switch-attn.json, switch-attn-quick.json with --quick; "
                   "$MORPHLM_RESULTS moves the folder). The plot is written next to it (.png)."),
    work_dir: Optional[Path] = typer.Option(
        None, help="Cache of the pretrained model, finished (arm, seed) runs and measurements; a rerun reuses them "
                   "and resumes unfinished runs. Default $MORPHLM_CACHE/switch-attn-bench."),
    table: bool = typer.Option(False, "--table", help="Print the README markdown table of an existing results JSON "
                                                     "and exit (runs nothing)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Pretrain a full-attention model once, continue it on the same tokens with Switch Attention at target full
    fractions 0.1, 0.25 and 0.5, with pure sliding-window attention and with full attention, for several seeds, and
    report held-out loss (overall and beyond the window), a long-range retrieval probe, the realised full fraction
    per layer, attention FLOPs, peak training memory and measured attention time against full attention."""
    _setup_logging(verbose)
    from ..bench import switch_attn as sb
    from ..bench.common import results_table

    if table:
        path = out or sb.results_path(sb.quick_config() if quick else sb.full_config())
        typer.echo(results_table(path, sb.markdown_table, "switch-attn", sb.BenchError))
        return
    changes: dict = {}
    if corpus is not None:
        changes["corpus"] = corpus
    if max_bytes is not None:
        changes["max_bytes"] = max_bytes
    if seeds is not None:
        if seeds < 1:
            raise sb.BenchError(f"--seeds {seeds}: need at least 1")
        changes["seeds"] = list(range(seeds))
    if steps is not None:
        changes["steps"] = steps
    if pretrain_steps is not None:
        changes["pretrain_steps"] = pretrain_steps
    if precision is not None:
        changes["precision"] = precision
    cfg = sb.quick_config(**changes) if quick else sb.full_config(**changes)
    if steps is not None and cfg.eval_every > steps:
        cfg.eval_every = max(steps // 2, 1)
    results = sb.run_benchmark(cfg, out_json=out, work_dir=work_dir, workers=workers)
    typer.echo(sb.markdown_table(results))
    typer.echo(f"\nwrote {out or sb.results_path(cfg)} and {results.get('plot')}")
