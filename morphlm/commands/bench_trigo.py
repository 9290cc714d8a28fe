"""`morphlm bench trigo`: the TRIGO benchmark (morphlm/bench/trigo.py) from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .base import _setup_logging, bench_app, friendly
from .bench_options import print_table
from .options import verb, with_config


@bench_app.command("trigo", cls=verb())
@with_config
@friendly
def bench_trigo(
    quick: bool = typer.Option(False, "--quick", help="Tiny models, a few items per set (seconds): a smoke test, "
                                                     "written to trigo-quick.json."),
    data: Optional[Path] = typer.Option(None, help="TRIGO data folder with TG-1/, TG-2/, TG-REAL/ (default: trigo/ "
                                                   "of the data folder, $MORPHLM_DATA)."),
    limit: Optional[int] = typer.Option(None, help="Keep the first N valid steps (part A) and N problems per subset "
                                                   "(part B). The full sets take hours on a CPU."),
    problems: Optional[int] = typer.Option(None, help="Problems per subset of part B when it should differ from "
                                                      "--limit."),
    train_limit: Optional[int] = typer.Option(None, help="Keep the first N TG-REAL train steps for training."),
    part: Optional[list[str]] = typer.Option(None, "--part", help="tactic | prover (repeatable; default both)."),
    subset: Optional[list[str]] = typer.Option(None, "--subset", help="tg1 | tg2 | real (repeatable; default all)."),
    searcher: Optional[list[str]] = typer.Option(None, "--searcher",
                                                 help="bfs | heuristic | lm (repeatable; default all)."),
    steps: Optional[int] = typer.Option(None, "--max-steps", help="Training steps of the tactic LM and the policy."),
    max_expansions: Optional[int] = typer.Option(None, help="Expansions per attempt (default 128)."),
    policy_mode: Optional[str] = typer.Option(None, help="sample (default: free LM samples, TRIGO's) | rank "
                                                         "(LM-sampled among the gym's legal actions)."),
    attempts: Optional[int] = typer.Option(None, help="Attempts per problem (default 8; pass@8 needs >= 8)."),
    time_limit: Optional[float] = typer.Option(None, help="Seconds per attempt (default 120)."),
    gen_problems: Optional[int] = typer.Option(None, help="Generated problems per rule count (1..3) whose gold "
                                                          "trajectories train the policy (full profile: 2,000)."),
    gym_share: Optional[float] = typer.Option(None, help="Least share of the policy's training rows that are gym "
                                                         "pairs (repeated to reach it; full profile: 0.7; 0: no repeats)."),
    out: Optional[Path] = typer.Option(
        None, help="Results JSON (default benchmarks/results/trigo.json, trigo-quick.json with --quick; "
                   "$MORPHLM_RESULTS moves the folder). The plot is written next to it (.png)."),
    work_dir: Optional[Path] = typer.Option(
        None, help="Cache of finished parts and the policy checkpoint; a rerun reuses them. Default "
                   "$MORPHLM_CACHE/trigo-bench."),
    only_cached: bool = typer.Option(False, "--only-cached", help="Assemble the results JSON from what is cached "
                                                                 "(finished cells; partial ones marked with the "
                                                                 "problems done) without training or searching."),
    table: bool = typer.Option(False, "--table", help="Print the README markdown tables of an existing results JSON "
                                                     "and exit (runs nothing)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Next-tactic prediction on TG-REAL valid (exact match, NLL; anchors always `rw this,` and BM25) and gym proving
    on TG-1, TG-2 and TG-REAL test (pass@1 / pass@8 at <= 128 expansions) for uniform BFS, a size heuristic and a
    best-first prover with a morphlm LM policy."""
    _setup_logging(verbose)

    from ..bench import trigo as tb

    if table:
        print_table("trigo", tb, tb.quick_config() if quick else tb.full_config(), out)
        return
    changes: dict = {}
    for name, value in (("limit", limit), ("train_limit", train_limit), ("max_expansions", max_expansions),
                        ("attempts", attempts), ("time_limit", time_limit), ("gen_problems", gen_problems),
                        ("policy_mode", policy_mode), ("gym_share", gym_share)):
        if value is not None:
            changes[name] = value
    if limit is not None:
        changes["problems"] = None  # --limit applies to both parts ...
    if problems is not None:
        changes["problems"] = problems  # ... unless part B is given its own
    if data is not None:
        changes["data"] = str(data)
    if only_cached:
        changes["only_cached"] = True
    if part:
        changes["parts"] = list(part)
    if subset:
        changes["subsets"] = list(subset)
    if searcher:
        changes["searchers"] = list(searcher)
    cfg = tb.quick_config(**changes) if quick else tb.full_config(**changes)
    if steps is not None:
        if steps < 1:
            raise tb.BenchError(f"--max-steps {steps}: need at least 1 training step")
        cfg.tactic = {**cfg.tactic, "steps": steps}
        cfg.policy = {**cfg.policy, "steps": steps}
    results = tb.run_benchmark(cfg, out_json=out, work_dir=work_dir)
    typer.echo(tb.markdown_table(results))
    typer.echo(f"\nwrote {out or tb.results_path(cfg)} and {results.get('plot')}")
