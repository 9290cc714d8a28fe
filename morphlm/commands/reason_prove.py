"""`morphlm reason trigo-prove`: prove the statements of a file in the TRIGO gym with a chosen searcher
(morphlm/reason/prover.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .base import _setup_logging, friendly, reason_app
from .options import verb, with_config


@reason_app.command("trigo-prove", cls=verb())
@with_config
@friendly
def trigo_prove(
    path: Path = typer.Argument(..., help="Statements: a Lean 3 file or folder (lemma NAME ... : LHS = RHS :=) or a "
                                          ".txt with one LHS = RHS per line."),
    searcher: str = typer.Option("heuristic", help="bfs | heuristic | lm (lm needs --policy)."),
    policy: Optional[Path] = typer.Option(None, help="Policy checkpoint for --searcher lm: a policy-* folder of "
                                                     "`morphlm bench trigo`'s work dir."),
    max_expansions: int = typer.Option(128, help="Expansions per attempt."),
    samples: int = typer.Option(8, help="Sampled actions per expansion (lm)."),
    policy_mode: str = typer.Option("sample", help="lm: sample (free LM samples, TRIGO's) | rank (LM-sampled among "
                                                   "the gym's legal actions)."),
    attempts: int = typer.Option(1, help="Attempts per statement (seeds 0..N-1); a statement counts as proved when "
                                         "any attempt closes it."),
    time_limit: Optional[float] = typer.Option(None, help="Seconds per attempt (default: no limit)."),
    width: Optional[int] = typer.Option(None, help="bfs/heuristic: children per expansion (default: every legal "
                                                   "action)."),
    limit: Optional[int] = typer.Option(None, help="Prove only the first N statements."),
    strict: bool = typer.Option(False, "--strict", help="Refuse a malformed statement instead of skipping it."),
    out: Optional[Path] = typer.Option(None, help="Write the results (per statement: proved, stop, expansions, "
                                                  "proof) as JSON here."),
    lean: Optional[Path] = typer.Option(None, help="Write the proofs found as Lean 3 tactic scripts in TRIGO's style "
                                                   "here (not checkable without Lean: a Lean install must confirm "
                                                   "them)."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Search for a proof of every statement: uniform BFS, best-first on a size heuristic, or best-first on an LM
    policy's cumulative log-probability; each step is checked by the SymPy gym (a stand-in for Lean). A search
    that runs out of expansions or time stops and reports what it found."""
    _setup_logging(verbose)
    from ..bench.common import write_json
    from ..reason import prover as pv

    if searcher not in pv.SEARCHERS:
        raise pv.ProverError(f"--searcher {searcher!r}: choose one of {', '.join(pv.SEARCHERS)}")
    if policy_mode not in pv.POLICY_MODES:
        raise pv.ProverError(f"--policy-mode {policy_mode!r}: choose one of {', '.join(pv.POLICY_MODES)}")
    if searcher == "lm" and policy is None:
        raise pv.ProverError("--searcher lm needs --policy DIR (a policy-* folder written by `morphlm bench trigo`)")
    if attempts < 1 or samples < 1 or max_expansions < 1:
        raise pv.ProverError(f"--attempts {attempts}, --samples {samples}, --max-expansions {max_expansions}: each "
                             f"must be >= 1")
    if limit is not None and limit < 1:
        raise pv.ProverError(f"--limit {limit}: must be >= 1")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; pass a .lean file or folder, or a .txt of LHS = RHS lines")
    stmts, rep = pv.load_statements(path, strict=strict)
    stmts = stmts[:limit]
    if not stmts:
        raise pv.ProverError(f"{path} holds no statement the gym can read ({rep.skipped} skipped: "
                             f"{'; '.join(rep.reasons[:3]) or 'none found'})")
    if rep.skipped:
        typer.secho(f"skipped {rep.skipped} malformed statement(s): {'; '.join(rep.reasons[:3])}", fg="yellow",
                    err=True)
    lm = None
    if searcher == "lm":
        from ..reason.tactic import load_pair_lm

        lm = load_pair_lm(policy)
    env = pv.trigo_env()
    rows, scripts = [], []
    for st in stmts:
        runs = pv.attempts(searcher, env, env.start(st), attempts, policy=lm, max_expansions=max_expansions,
                           time_limit=time_limit, samples=samples, width=width,
                           policy_mode=policy_mode)
        best = next((r for r in runs if r.proved), runs[-1])
        rows.append({"name": st.name, "proved": best.proved, "successes": sum(r.proved for r in runs),
                     "attempts": len(runs), **{k: v for k, v in best.to_dict().items() if k != "proved"}})
        status = "proved" if best.proved else f"not proved ({best.stop})"
        typer.echo(f"{st.name}: {status} after {best.expansions} expansions, {best.seconds:.1f} s")
        for a in best.proof:
            typer.echo(f"    {a}")
        if not best.proved and best.frontier is not None:
            typer.echo(f"    best lead after {len(best.frontier_path)} step(s): {best.frontier}")
        if lean is not None and best.proved:
            from ..reason.trigo_gym import Proof, to_lean

            scripts.append(to_lean(Proof(st, [env.parse_action(a) for a in best.proof]), env.gym))
    n_ok = sum(r["proved"] for r in rows)
    typer.echo(f"\n{n_ok}/{len(rows)} proved with {searcher} (≤ {max_expansions} expansions, {attempts} attempt(s))")
    if lean is not None:
        from ..io import write_atomic

        write_atomic(lean, "import trigo_import\nopen real\nopen_locale real\nvariables (x y : ℝ)\n\n"
                     + "\n\n".join(scripts) + "\n")
        typer.echo(f"wrote {len(scripts)} Lean 3 script(s) to {lean} (unchecked here: no Lean)")
    if out is not None:
        write_json(out, {"searcher": searcher, "max_expansions": max_expansions, "samples": samples,
                         "attempts": attempts, "time_limit": time_limit, "file": str(path), "proved": n_ok,
                         "statements": rows})
        typer.echo(f"wrote {out}")
