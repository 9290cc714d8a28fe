"""`morphlm bench discover`: Hard-Mode answer discovery on miniF2F (morphlm/bench/discover.py) from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .base import _setup_logging, bench_app, friendly
from .bench_options import print_table
from .options import verb, with_config


@bench_app.command("discover", cls=verb())
@with_config
@friendly
def bench_discover(
    quick: bool = typer.Option(False, "--quick", help="CI size (< 30 s): the SymPy arm on the first 40 test "
                                                     "statements; the LM arms only with --model. Writes "
                                                     "discover-quick.json."),
    splits: Optional[str] = typer.Option(None, help="Comma-separated miniF2F splits (default test,valid; --quick "
                                                    "test)."),
    limit: Optional[int] = typer.Option(None, help="Statements per split for the SymPy arm (default all 244)."),
    lm_limit: Optional[int] = typer.Option(None, "--lm-limit", help="Answer-style statements per split for the LM "
                                                                   "arms (default 40: CPU decoding is slow)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Tokens per LM reply (default 64)."),
    rounds: Optional[int] = typer.Option(None, help="Proposals of the discovery loop (default 5)."),
    model: Optional[Path] = typer.Option(None, help="Checkpoint directory of the chat model (default: SmolLM2-135M-"
                                                    "Instruct imported from GGUF when the importer is available)."),
    lm: bool = typer.Option(True, "--lm/--no-lm", help="Run the LM arms (single-shot and loop)."),
    root: Optional[Path] = typer.Option(None, help="miniF2F folder (default minif2f/ of $MORPHLM_DATA)."),
    out: Optional[Path] = typer.Option(None, help="Results JSON (default benchmarks/results/discover.json, "
                                                  "discover-quick.json with --quick; $MORPHLM_RESULTS moves it)."),
    table: bool = typer.Option(False, "--table", help="Print the README table of an existing results JSON and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Mask the answer of every miniF2F statement whose conclusion is `LHS = <number>` (Hard Mode) and recover it
    with the SymPy discoverer, a chat model asked once, and the chat model in a propose → check → correct loop;
    report recovered / wrong / abstained answers by source."""
    _setup_logging(verbose)

    from ..bench import discover as bd

    if table:
        print_table("discover", bd, bd.quick_config() if quick else bd.full_config(), out)
        return
    changes: dict = {}
    if splits is not None:
        changes["splits"] = [s.strip() for s in splits.split(",") if s.strip()]
    for name, value in (("limit", limit), ("lm_limit", lm_limit), ("max_new_tokens", max_new_tokens),
                        ("rounds", rounds)):
        if value is not None:
            changes[name] = value
    if model is not None:
        changes["model"] = str(model)
        changes["lm"] = lm
    elif not lm:
        changes["lm"] = False
    if root is not None:
        changes["root"] = str(root)
    cfg = bd.quick_config(**changes) if quick else bd.full_config(**changes)
    results = bd.run_benchmark(cfg, out_json=out)
    typer.echo(bd.markdown_table(results))
    typer.echo(f"\nwrote {out or bd.results_path(cfg)}")
