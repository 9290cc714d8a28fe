"""`morphlm reason generate` and `morphlm reason trigo check`: TRIGO problems made and checked with the SymPy gym
(morphlm/reason/trigo_*.py)."""

from __future__ import annotations

import json
from pathlib import Path
import typer

from .base import friendly, reason_app
from .options import verb, with_config

trigo_app = typer.Typer(no_args_is_help=True, help="The TRIGO trig-reduction gym: check statement files.")
reason_app.add_typer(trigo_app, name="trigo")


@reason_app.command("generate", cls=verb())
@with_config
@friendly
def reason_generate(
    rules: int = typer.Option(1, "--rules", help="Rewrites per problem (TG-k: k rule applications after the seed)."),
    n: int = typer.Option(100, "--n", help="Number of problems."),
    seed: int = typer.Option(0, "--seed", help="Random seed (the same seed gives the same file)."),
    out: Path = typer.Option(..., "--out", help="Lean 3 file to write (TRIGO's TG format, gold proofs included)."),
) -> None:
    """Generate TG-k trigonometric reduction problems with TRIGO's procedure (no Lean: the SymPy gym checks each
    rewrite) and write them with their gold proofs (a TRIGO-style Lean script, not checked here, plus the gym
    actions as `-- gold:` lines)."""
    from ..reason.trigo_gen import generate, write_problems

    if out.exists() and out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give a file name such as tg{rules}.lean")
    proofs = generate(rules, n, seed=seed)
    write_problems(proofs, out)
    typer.echo(f"wrote {len(proofs)} TG-{rules} problems (seed {seed}) to {out}")


@trigo_app.command("check", cls=verb())
@with_config
@friendly
def trigo_check(
    path: Path = typer.Argument(..., help="A TRIGO .lean file or folder (TG-REAL, TRIGO-web, TG-k, generated)."),
    strict: bool = typer.Option(False, "--strict", help="Refuse a malformed lemma (file:line) instead of skipping it."),
    show: int = typer.Option(20, "--show", help="List at most this many statements that do not pass."),
    as_json: bool = typer.Option(False, "--json", help="Print the counts and every verdict as one JSON object."),
) -> None:
    """Load statements and report: how many are numerically true in plain arithmetic, how many only under Lean's
    total division (x/0 = 0), how many are false, and whether their gold proofs (if any) replay in the gym."""
    from ..reason.trigo_data import LoadReport, load_trigo
    from ..reason.trigo_gym import Gym, check_statement

    rep = LoadReport()
    stmts = load_trigo(path, strict=strict, report=rep)
    gym = Gym(helpers=False)
    results = [check_statement(s, gym) for s in stmts]
    counts = {k: sum(r.status == k for r in results) for k in ("equal", "total", "false", "error")}
    with_gold = [r for r in results if r.gold is not None]
    if as_json:
        typer.echo(json.dumps({"path": str(path), "statements": len(stmts), "skipped": rep.skipped,
                               "counts": counts, "gold_replayed": sum(bool(r.gold) for r in with_gold),
                               "with_gold": len(with_gold), "verdicts": [r.__dict__ for r in results]}))
        return
    typer.echo(f"{path}: {len(stmts)} statements, {rep.skipped} malformed lines skipped")
    typer.echo(f"  true: {counts['equal']}   true only under total division: {counts['total']}   "
               f"false: {counts['false']}   unreadable: {counts['error']}")
    if with_gold:
        typer.echo(f"  gold proofs replaying to a closed goal: {sum(r.gold for r in with_gold)}/{len(with_gold)}")
    for why in rep.reasons[:show]:
        typer.echo(f"  skipped {why}")
    bad = [r for r in results if r.status in ("false", "error") or r.gold is False]
    for r in bad[:show]:
        typer.echo(f"  {r.name}: {r.status}{' (gold proof fails: ' + r.detail + ')' if r.gold is False else ''}")
