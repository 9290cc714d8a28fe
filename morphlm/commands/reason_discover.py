"""`morphlm reason formal-stats` and `morphlm reason discover`: the formal statement sets (FIMO, miniF2F) and
Hard-Mode answer discovery with SymPy (morphlm/reason/formal.py, hardmode.py, discover.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .base import _setup_logging, friendly, reason_app
from .options import verb, with_config

SETS = "minif2f-test | minif2f-valid | fimo | a .lean file"


def _load(name: str, root: Optional[Path], strict: bool):
    from ..reason import formal

    if name in ("minif2f-test", "minif2f-valid"):
        return formal.load_minif2f(name.split("-", 1)[1], root, strict=strict)
    if name == "fimo":
        return formal.load_fimo(root, strict=strict)
    path = Path(name)
    if path.suffix == ".lean" or path.is_file():
        st, skipped = formal.parse_lean_file(path, strict=strict)
        return formal.FormalSet(path.name, st, skipped)
    raise ValueError(f"unknown statement set {name!r}; choose {SETS}")


@reason_app.command("formal-stats", cls=verb())
@with_config
@friendly
def formal_stats(
    sets: list[str] = typer.Argument(None, help=f"Statement sets ({SETS}); default all three named sets."),
    root: Optional[Path] = typer.Option(None, help="Folder of the set (default: minif2f/ or fimo/ of "
                                                   "$MORPHLM_DATA)."),
    strict: bool = typer.Option(False, "--strict", help="Refuse a malformed statement instead of skipping it."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Counts of FIMO / miniF2F statements by source, answer-style (Hard-Mode) counts, skipped malformed ones."""
    _setup_logging()
    from ..reason.formal import statistics

    out = {}
    for name in sets or ["minif2f-test", "minif2f-valid", "fimo"]:
        fs = _load(name, root, strict)
        out[name] = {**statistics(fs), "skipped_list": fs.skipped}
    if as_json:
        typer.echo(json.dumps(out, ensure_ascii=False, indent=1))
        return
    for name, s in out.items():
        typer.echo(f"{name}: {s['statements']} statements ({s['skipped']} skipped), answer-style "
                   f"{s['answer_style']}; by source {s['by_source']}; answer-style by source "
                   f"{s['answer_style_by_source']}")
        for line in s["skipped_list"]:
            typer.echo(f"  skipped {line}")


@reason_app.command("discover", cls=verb())
@with_config
@friendly
def discover(
    statements: str = typer.Argument("minif2f-test", help=f"Statement set ({SETS})."),
    name: Optional[list[str]] = typer.Option(None, "--name", help="Only these theorem names (repeatable)."),
    limit: Optional[int] = typer.Option(None, help="First N statements only."),
    root: Optional[Path] = typer.Option(None, help="Folder of the set (default: from $MORPHLM_DATA)."),
    strict: bool = typer.Option(False, "--strict", help="Refuse a malformed statement instead of skipping it."),
    show_hard: bool = typer.Option(False, "--show-hard", help="Print each Hard-Mode statement and the Easy one "
                                                              "rebuilt from the discovered answer."),
    seconds: float = typer.Option(10.0, help="SymPy time limit per method and statement."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Hard-Mode answer discovery with SymPy: mask the constant of `LHS = <number>` conclusions and recover it
    (compute / solve / enumerate, checked by substitution — a stand-in for Lean). Abstains rather than guess."""
    _setup_logging()
    from collections import Counter

    from ..reason.discover import build_problem, discover_sympy

    if limit is not None and limit < 1:
        raise ValueError(f"--limit {limit}: need at least 1")
    fs = _load(statements, root, strict)
    chosen = [s for s in fs.statements if not name or s.name in name]
    if name:
        missing = sorted(set(name) - {s.name for s in chosen})
        if missing:
            raise ValueError(f"no theorem named {', '.join(missing)} in {fs.name}")
    chosen = chosen[:limit] if limit else chosen
    rows, counts = [], Counter()
    for s in chosen:
        p = build_problem(s)
        if p is None:
            counts["not answer-style"] += 1
            continue
        d = discover_sympy(p, seconds=seconds)
        counts[d.status] += 1
        row = {"name": s.name, "source": s.source, "status": d.status, "method": d.method,
               "answer": d.answer_text, "gold": p.hard.gold, "reason": d.reason}
        rows.append(row)
        if not as_json:
            typer.echo(f"{s.name}: {d.status}" + (f" ({d.method}) {d.answer_text}" if d.answer is not None else "")
                       + f"  gold {p.hard.gold}" + (f"  — {d.reason[:160]}" if d.status != "recovered" and d.reason
                                                    else ""))
            if show_hard:
                typer.echo(p.hard.text)
                if d.answer is not None:
                    typer.echo(p.hard.fill(d.answer_text))
    summary = {"set": fs.name, "statements": len(chosen), "skipped": len(fs.skipped), **dict(counts)}
    if as_json:
        typer.echo(json.dumps({"summary": summary, "results": rows}, ensure_ascii=False, indent=1))
    else:
        typer.echo(json.dumps(summary, ensure_ascii=False))
