"""`morphlm bench switch-attn`: the Switch Attention benchmark (morphlm/bench/switch_attn.py) from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .base import _setup_logging, bench_app, friendly
from .bench_options import (config_changes, corpus_option, max_bytes_option, out_option, precision_option,
                            print_table, run_and_report, seeds_option, table_option, verbose_option, work_dir_option,
                            workers_option)
from .options import verb, with_config


@bench_app.command("switch-attn", cls=verb())
@with_config
@friendly
def bench_switch_attn(
    quick: bool = typer.Option(False, "--quick", help="One seed at a small size (context 256, window 32), every "
                                                     "arm: a smoke test, written to switch-attn-quick.json."),
    corpus: Optional[str] = corpus_option(),
    max_bytes: Optional[int] = max_bytes_option(),
    seeds: Optional[int] = seeds_option(),
    steps: Optional[int] = typer.Option(None, "--max-steps", help="Continuation steps of every arm."),
    pretrain_steps: Optional[int] = typer.Option(None, help="Steps of the shared full-attention pretraining."),
    precision: Optional[str] = precision_option(),
    workers: Optional[int] = workers_option(),
    out: Optional[Path] = out_option("switch-attn"),
    work_dir: Optional[Path] = work_dir_option(
        "switch-attn-bench", "the pretrained model, finished (arm, seed) runs and measurements"),
    table: bool = table_option(),
    verbose: bool = verbose_option(),
) -> None:
    """Pretrain a full-attention model once, continue it on the same tokens with Switch Attention at target full
    fractions 0.1, 0.25 and 0.5, with pure sliding-window attention and with full attention, for several seeds, and
    report held-out loss (overall and beyond the window), a long-range retrieval probe, the realised full fraction
    per layer, attention FLOPs, peak training memory and measured attention time against full attention."""
    _setup_logging(verbose)
    from ..bench import switch_attn as sb

    if table:
        print_table("switch-attn", sb, sb.quick_config() if quick else sb.full_config(), out)
        return
    changes = config_changes(sb.BenchError, seeds, corpus=corpus, max_bytes=max_bytes, steps=steps,
                             pretrain_steps=pretrain_steps, precision=precision)
    cfg = sb.quick_config(**changes) if quick else sb.full_config(**changes)
    if steps is not None and cfg.eval_every > steps:
        cfg.eval_every = max(steps // 2, 1)
    run_and_report(sb, cfg, out, work_dir, workers)
