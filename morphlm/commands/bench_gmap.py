"""`morphlm bench gmap`: the G-MAP benchmark (morphlm/bench/gmap.py) from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .base import _setup_logging, bench_app, friendly
from .bench_options import (config_changes, out_option, precision_option, print_table, run_and_report, seeds_option,
                            table_option, verbose_option, work_dir_option, workers_option)
from .options import verb, with_config


@bench_app.command("gmap", cls=verb())
@with_config
@friendly
def bench_gmap(
    quick: bool = typer.Option(False, "--quick", help="One seed at a small size, every arm: a smoke test, written to "
                                                     "gmap-quick.json."),
    corpus: Optional[str] = typer.Option(
        None, help="General corpus (name, folder, glob). Default: gutenberg/ of the data folder ($MORPHLM_DATA) when "
                   "present, else shakespeare. Train and validation are split by whole books."),
    max_bytes: Optional[int] = typer.Option(None, help="Cap on general-corpus bytes (whole documents in order)."),
    data_dir: Optional[Path] = typer.Option(
        None, help="Folder that holds glue-sst2/ (the task, and domain sentences) and sst2-sentences/ (domain "
                   "sentences). Default: $MORPHLM_DATA, else ../shared/data next to the repository."),
    seeds: Optional[int] = seeds_option(),
    pretrain_steps: Optional[int] = typer.Option(None, help="Steps of the general model's pretraining (once)."),
    domain_steps: Optional[int] = typer.Option(None, help="Domain-pretraining steps of DAPT and every G-MAP arm."),
    finetune_steps: Optional[int] = typer.Option(None, help="SST-2 fine-tuning steps of every arm."),
    precision: Optional[str] = precision_option(),
    workers: Optional[int] = workers_option(),
    out: Optional[Path] = out_option("gmap"),
    work_dir: Optional[Path] = work_dir_option(
        "gmap-bench", "the general model, the domain corpus and finished (arm, seed) runs"),
    table: bool = table_option(),
    verbose: bool = verbose_option(),
) -> None:
    """Pretrain a general model on the books once, then for several seeds: fine-tune it on SST-2; domain-adaptive
    pretraining (DAPT) on movie-review sentences then fine-tuning; G-MAP with each fusion strategy (the frozen
    general model as memory) then fine-tuning — at equal trainable steps. Reports SST-2 dev accuracy, forgetting
    (general-domain loss after adaptation) and the compute of each arm."""
    _setup_logging(verbose)
    from ..bench import gmap as gb

    if table:
        print_table("gmap", gb, gb.quick_config() if quick else gb.full_config(), out)
        return
    changes = config_changes(gb.BenchError, seeds, data_dir=None if data_dir is None else str(data_dir),
                             corpus=corpus, max_bytes=max_bytes, pretrain_steps=pretrain_steps,
                             domain_steps=domain_steps, finetune_steps=finetune_steps, precision=precision)
    cfg = gb.quick_config(**changes) if quick else gb.full_config(**changes)
    run_and_report(gb, cfg, out, work_dir, workers)
