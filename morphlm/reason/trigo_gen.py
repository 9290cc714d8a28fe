"""TRIGO's problem generator without Lean (Xiong et al., EMNLP 2023, arXiv 2310.10180, the generator of
TG-1/2/3), seeded and reproducible, with gold proofs.

Procedure (the paper's, with the gym standing in for lean-gym):

1. A seed rule (any of the 85 but the ten tan-heavy ones TRIGO bans first), instantiated with X, Y drawn from
   {±2π, ±π, ±π/2, ±π/3, ±π/6} (Y ≠ X) and, for an induction formula, K ~ U{0..100}: a true equation.
2. Up to ``tries`` times: a random rule, matched left-to-right bottom-up (the deepest matching subterm first)
   in a random side; an induction formula takes a fresh K ~ U{0..100}. The rewrite is kept when the gym's
   numeric guard accepts it, the sides stay different and the goal is not already closed by algebra (TRIGO
   rejects Lean's ``no goals``). Stop after ``rules`` accepted rewrites (TG-k: k rewrites).
3. The gold proof is the reversed trace: each kept rewrite undone right-to-left, then the seed rule, which
   closes the goal. Every problem's gold proof is replayed in the gym before it is kept.

Reconstruction: where TRIGO checked each rewrite in Lean, here the guard (40-digit values at random points,
Lean's total division) does; TRIGO's ``delete_useless_data`` pruning is replaced by keeping only problems
whose gold proof replays; hypotheses ``D ≠ 0`` are added for every trig denominator, as TRIGO's ``has_nonzero``
adds them."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

import sympy as sp

from .trigo_data import Statement
from .trigo_expr import TRIG_FUNCS, TrigoError, to_lean as expr_to_lean
from .trigo_gym import _N, _X, _Y, Action, Gym, Proof, TrigoState, _inst, _postorder, to_lean
from .trigo_rules import FIRST_RULE_BANNED, RULES

ANGLES = (2 * sp.pi, -2 * sp.pi, sp.pi, -sp.pi, sp.pi / 2, -sp.pi / 2, sp.pi / 3, -sp.pi / 3, sp.pi / 6, -sp.pi / 6)


class GeneratorError(TrigoError):
    """The generator could not make a problem (bad settings or every try refused)."""


def _denominators(e) -> list:
    out = []
    for node in sp.preorder_traversal(e):
        if isinstance(node, sp.Pow) and node.exp.is_Number and node.exp < 0 and node.base.atoms(*TRIG_FUNCS):
            out.append(node.base)
    return out


def _seed(rng: random.Random, gym: Gym) -> Optional[tuple]:
    rule = rng.choice([r for r in RULES if r.name not in FIRST_RULE_BANNED])
    x = rng.choice(ANGLES)
    y = rng.choice([a for a in ANGLES if a != x])
    bind = {_X: x, _Y: y, _N: sp.Integer(rng.randint(0, 100))}
    lhs, rhs = _inst(rule.lhs, bind), _inst(rule.rhs, bind)
    st = TrigoState.make(lhs, rhs)
    if st.lhs == st.rhs:
        return None
    if not gym_guard_ok(gym, st):
        return None
    k = int(bind[_N]) if rule.periodic else None
    # the seed step must itself be a gym step that closes the goal: the rule left-to-right on the left side, or,
    # where the left side's angle arithmetic was evaluated (an addition formula: sin(π/3 + π/2) is sin(5π/6)
    # in the gym, which sin_add cannot split), right-to-left on the right side
    for seed_action in (Action(rule.name, False, "lhs", expr_to_lean(st.lhs), k),
                        Action(rule.name, True, "rhs", expr_to_lean(st.rhs), k)):
        try:
            if gym.is_closed(gym.step(st, seed_action)):
                return st, seed_action
        except TrigoError:
            continue
    return None


def gym_guard_ok(gym: Gym, st: TrigoState) -> bool:
    from .trigo_expr import numerically_equal

    return numerically_equal(st.lhs, st.rhs, total=True, points=max(1, gym.guard_points), seed=gym.seed)


def _forward_matches(gym: Gym, st: TrigoState, side: str, rule) -> list:
    """Left-to-right matches of ``rule`` on ``side``, deepest first."""
    acts = gym.actions(st, rules=[rule.name])
    acts = [a for a in acts if a.side == side and not a.reverse and a.rule == rule.name]
    if not acts:
        return []
    order = {expr_to_lean(node): i for i, (node, _) in enumerate(_postorder(st.side(side)))}
    return sorted(acts, key=lambda a: order.get(a.target, len(order)))


def generate_one(rng: random.Random, rules: int, gym: Optional[Gym] = None, tries: int = 200,
                 name: str = "Trigo_gen") -> Optional[Proof]:
    """One TG-``rules`` problem with its gold proof, or None when this draw failed (the caller redraws)."""
    gym = gym or Gym(helpers=False)
    seeded = _seed(rng, gym)
    if seeded is None:
        return None
    st, seed_action = seeded
    trace: list[tuple] = []  # (action, state before, state after)
    for _ in range(tries):
        if len(trace) >= rules:
            break
        rule = rng.choice(RULES)
        side = rng.choice(("lhs", "rhs"))
        matches = _forward_matches(gym, st, side, rule)
        if not matches:
            continue
        a = matches[0]
        if rule.periodic:
            a = Action(a.rule, False, a.side, a.target, rng.randint(0, 100))
        try:
            new_st, part, new, k = gym.rewrite(st, a)
            new_st = gym.step(st, a)
        except TrigoError:
            continue
        if new_st.lhs == new_st.rhs or gym.is_closed(new_st) or "⁻¹" in new_st.to_text():
            continue
        inverse = Action(a.rule, True, a.side, expr_to_lean(new), k)
        trace.append((inverse, new_st))
        st = new_st
    if len(trace) < rules:
        return None
    gold = [inv for inv, _ in reversed(trace)] + [seed_action]
    hyps = [f"{expr_to_lean(d)} ≠ 0" for d in dict.fromkeys(_denominators(st.lhs) + _denominators(st.rhs))]
    stmt = Statement(name=name, lhs=st.lhs, rhs=st.rhs, hyps=hyps, text=st.to_text())
    proof = Proof(stmt, gold)
    try:
        closed, _ = proof.replay(gym)
    except TrigoError:
        return None
    return proof if closed else None


def generate(rules: int, n: int, seed: int = 0, max_draws_per_problem: int = 50,
             gym: Optional[Gym] = None) -> list[Proof]:
    """``n`` TG-``rules`` problems, reproducible from ``seed`` (one RNG stream; distinct statements only)."""
    if rules < 1:
        raise GeneratorError(f"--rules must be at least 1 (got {rules}): it is the number of rewrites per problem")
    if n < 1:
        raise GeneratorError(f"--n must be at least 1 (got {n})")
    rng = random.Random(seed)
    gym = gym or Gym(helpers=False)
    out: list[Proof] = []
    seen: set = set()
    draws = 0
    while len(out) < n:
        if draws >= max_draws_per_problem * n:
            raise GeneratorError(f"only {len(out)} of {n} problems after {draws} draws (rules={rules}); "
                                 "try fewer rules")
        draws += 1
        p = generate_one(rng, rules, gym, name=f"Trigo_gen{rules}_{len(out)}")
        if p is None or p.statement.text in seen:
            continue
        seen.add(p.statement.text)
        out.append(p)
    return out


def write_problems(proofs: list[Proof], path, gym: Optional[Gym] = None) -> Path:
    """A Lean 3 file in TRIGO's TG format (header, one lemma per problem with the TRIGO-style proof), each
    proof block also carrying its gym actions as ``-- gold: ACTION`` comments (what :func:`load_trigo`
    reads back as ``Statement.gold``). Written to a temporary file and renamed (nothing half-written)."""
    gym = gym or Gym(helpers=False)
    parts = ["import trigo_import\nopen real\nopen_locale real\nvariables (x y : ℝ)\n\n"]
    for p in proofs:
        text = to_lean(p, gym)
        head, rest = text.split("\nbegin\n", 1)
        gold = "".join(f"  -- gold: {a.to_text()}\n" for a in p.actions)
        parts.append(f"{head}\nbegin\n{gold}{rest}\n")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(parts), encoding="utf-8")
    tmp.replace(out)
    return out


__all__ = ["generate", "generate_one", "write_problems", "GeneratorError"]
