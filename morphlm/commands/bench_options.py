"""What the LM benchmarks' commands share (``morphlm bench moe | switch-attn | dssn | gmap | growth``): the options
that mean the same in each (one function per option, so its flag and help are written once) and the
steps around a run — ``--table``, ``--seeds N`` and the other settings as config changes, the report."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import typer


def corpus_option() -> Any:
    return typer.Option(None, help="Corpus (name, folder, glob). Default: gutenberg/ of the data folder "
                                   "($MORPHLM_DATA) when present, else shakespeare. Train and validation are split "
                                   "by whole books.")


def max_bytes_option() -> Any:
    return typer.Option(None, help="Cap on corpus bytes (whole documents in order).")


def seeds_option() -> Any:
    return typer.Option(None, help="Number of seeds (default 3; --quick 1).")


def precision_option() -> Any:
    return typer.Option(None, help="auto (default: bf16 autocast on CPUs with native bf16, else fp32) | fp32 | bf16.")


def workers_option() -> Any:
    return typer.Option(None, help="Parallel single-threaded runs (default min(cores, 2)).")


def out_option(stem: str) -> Any:
    """``--out``: the results JSON, by default ``benchmarks/results/<stem>.json`` (``<stem>-quick.json``)."""
    return typer.Option(None, help=f"Results JSON (default benchmarks/results/{stem}.json, {stem}-quick.json with "
                                   f"--quick; $MORPHLM_RESULTS moves the folder). The plot is written next to it "
                                   f"(.png).")


def work_dir_option(folder: str, holds: str) -> Any:
    """``--work-dir``: the cache of ``holds``, by default ``$MORPHLM_CACHE/<folder>``."""
    return typer.Option(None, help=f"Cache of {holds}; a rerun reuses them and resumes unfinished runs. Default "
                                   f"$MORPHLM_CACHE/{folder}.")


def table_option() -> Any:
    return typer.Option(False, "--table", help="Print the README markdown table of an existing results JSON and exit "
                                               "(runs nothing).")


def verbose_option() -> Any:
    return typer.Option(False, "--verbose", "-v")

def print_table(bench: str, module: ModuleType, cfg: Any, out: Optional[Path]) -> None:
    """``--table``: the README table of the results JSON at ``out`` (default: where ``cfg``'s profile writes it);
    a missing or foreign file fails naming the fix (:func:`morphlm.bench.common.results_table`)."""
    from ..bench.common import results_table

    typer.echo(results_table(out or module.results_path(cfg), module.markdown_table, bench, module.BenchError))


def config_changes(error: type[Exception], seeds: Optional[int], **values: Any) -> dict[str, Any]:
    """The settings given on the line as changes to a benchmark's config: every value that is not None, and
    ``--seeds N`` as seeds 0..N-1 (``error`` when N < 1)."""
    changes = {name: value for name, value in values.items() if value is not None}
    if seeds is not None:
        if seeds < 1:
            raise error(f"--seeds {seeds}: need at least 1")
        changes["seeds"] = list(range(seeds))
    return changes


def comma_list(text: Optional[str]) -> Optional[list[str]]:
    """``a, b,c`` as ``["a", "b", "c"]``; None for an absent or empty option."""
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def run_and_report(module: ModuleType, cfg: Any, out: Optional[Path], work_dir: Optional[Path],
                   workers: Optional[int]) -> None:
    """Run (or resume) the benchmark, print its README table and where the results and the plot went."""
    results = module.run_benchmark(cfg, out_json=out, work_dir=work_dir, workers=workers)
    typer.echo(module.markdown_table(results))
    typer.echo(f"\nwrote {out or module.results_path(cfg)} and {results.get('plot')}")
