"""Hard-Mode answer discovery (Discover-and-Prove, Liu et al., ACL 2026, arXiv 2604.15839, §3) without Lean.

* :func:`discover_sympy`: a SymPy discoverer. The statement's binders and hypotheses are parsed
  (:mod:`morphlm.reason.leanexpr`); definitions ``∀ x, f x = ...`` are inlined; then, in order,
  ``compute`` (the conclusion's LHS is closed: evaluate it with Lean's semantics), ``solve`` (the equality
  hypotheses that are algebraic in the unknowns go to ``sympy.solve``; every solution is checked against the
  variables' types and, exactly, against every hypothesis; the branches where a symbolic denominator is 0 are
  solved too, because Lean's ``x / 0 = 0`` can satisfy an equation a field cannot) and ``enumerate`` (integer
  unknowns bounded by the hypotheses are enumerated and every hypothesis is checked exactly). The answer is the
  LHS's value when it is the SAME over every surviving candidate; otherwise the discoverer abstains. Dropping a
  hypothesis it cannot handle only adds candidates, so it can make the discoverer abstain but never answer wrongly;
  what could make it wrong is a solver that misses solutions, which is why only algebraic equations are solved.
* "Prove" is a stand-in for Lean (which cannot run here): :func:`check_answer` substitutes a proposed answer for
  the placeholder and checks the conclusion against the value the hypotheses force (SymPy, exact; numerical
  agreement to 60 digits only where SymPy cannot decide an equality). Where the discoverer abstains nothing can
  be checked.
* LM discovery, written against ``chat(messages) -> str`` so a scripted fake can drive it:
  :func:`single_shot` asks once and parses the last number; :func:`discovery_loop` proposes, checks by
  substitution, and on failure answers "your answer X fails because ..., correct it" for at most ``rounds``
  rounds (DAP's generate → verify → correct loop, reduced to one checker and one model).
"""

from __future__ import annotations

import re
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import sympy as sp

from .formal import FormalStatement
from .hardmode import HardStatement, to_hard_mode
from .leaneval import Env, Evaluator, Func, compare, equal, is_num
from .leanexpr import INTEGRAL, LeanSyntaxError, Unsafe, free_vars, lean_type, parse

MAX_ENUM = 20000
SOLVE_SECONDS = 10


class DiscoverTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float):
    """SIGALRM-based limit in the main thread (sympy.solve has no timeout of its own); no limit elsewhere."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def handler(signum, frame):
        raise DiscoverTimeout()

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Problem:
    """An answer-style statement ready for discovery."""

    stmt: FormalStatement
    hard: HardStatement
    env: Env
    hyps: list[Any]  # parsed hypothesis ASTs (conjunctions split), definitions removed
    lhs: Any
    answer_type: str  # morphlm type name: nat, int, rat, real, complex, nnreal
    gold: Any  # the masked constant's value (SymPy) or None when it cannot be evaluated
    skipped_hyps: int = 0
    opaque: set[str] = field(default_factory=set)


@dataclass
class Discovery:
    name: str
    source: str
    status: str  # recovered | wrong | gold_false (the Easy statement is false: counterexample found) | abstain
    method: str | None = None  # compute | solve | enumerate
    answer: Any = None
    reason: str = ""
    seconds: float = 0.0

    @property
    def answer_text(self) -> str | None:
        return None if self.answer is None else to_lean(self.answer)


def _split_and(node) -> list:
    if node[0] == "bin" and node[1] in ("∧", "/\\"):
        return _split_and(node[2]) + _split_and(node[3])
    return [node]


def build_problem(stmt: FormalStatement) -> Problem | None:
    """The :class:`Problem` of an answer-style statement, or None when it has no Hard-Mode form."""
    hard = to_hard_mode(stmt)
    if hard is None:
        return None
    env = Env()
    opaque: set[str] = set()
    for b in stmt.variables:
        t = lean_type(b.type)
        if t is not None:
            env.types[b.name] = t
            continue
        parts = [p.strip() for p in b.type.split("→")]
        kinds = [lean_type(p) for p in parts]
        if len(parts) > 1 and all(kinds):
            env.fun_types[b.name] = (kinds[:-1], kinds[-1])
        else:
            opaque.add(b.name)
    hyps, skipped = [], 0
    for b in stmt.hypotheses:
        try:
            node = parse(b.type)
        except LeanSyntaxError:
            skipped += 1
            continue
        for h in _split_and(node):
            d = _definition(h, env)
            if d is not None:
                env.funcs[d[0]] = d[1]
            else:
                hyps.append(h)
    t = lean_type(hard.answer_type) or "nat"
    try:
        lhs = parse(hard.lhs)
    except LeanSyntaxError:
        lhs = None
    gold = None
    try:
        ev = Evaluator(Env(types=dict(env.types)))
        gold = ev.value(parse(hard.gold), t)
        if not is_num(gold):
            gold = None
    except (LeanSyntaxError, Unsafe, ValueError, TypeError, ZeroDivisionError):
        gold = None
    return Problem(stmt, hard, env, hyps, lhs, t, gold, skipped, opaque)


def _definition(h, env: Env) -> tuple[str, Func] | None:
    """``∀ x y, f x y = body`` (optionally ``∀ x ≠ c, ...``) with f an undefined function not in body."""
    guard = None
    if h[0] == "quant" and h[1] == "∀":
        params, guard, body = h[2], h[3], h[4]
    else:
        return None
    if body[0] != "bin" or body[1] != "=" or body[2][0] != "app" or body[2][1][0] != "var":
        return None
    name, args = body[2][1][1], body[2][2]
    if name not in env.fun_types or name in env.funcs:
        return None
    if [a for a in args] != [("var", p) for p in params] or name in free_vars(body[3]):
        return None
    if guard is not None and len(params) != 1:
        return None
    ats, cod = env.fun_types[name]
    if len(ats) != len(params):
        return None
    return name, Func(list(params), body[3], ats, cod, guard)


def _symbol(name: str, t: str) -> sp.Symbol:
    kw: dict[str, Any] = {}
    if t in INTEGRAL:
        kw["integer"] = True
    elif t != "complex":
        kw["real"] = True
    if t in ("nat", "nnreal"):
        kw["nonnegative"] = True
    if t == "pnat":
        kw["positive"] = True
    return sp.Symbol(name, **kw)


def _in_domain(v, t: str) -> bool:
    if not is_num(v):
        return True
    if t == "complex":
        return True
    if v.is_real is False:
        return False
    if v.is_real is None:  # radicals SymPy cannot classify: decide numerically, keep when the imaginary part is ~0
        try:
            if abs(complex(sp.N(v, 50)).imag) > 1e-40:
                return False
        except TypeError:
            return True
    if t in INTEGRAL and not v.is_integer:
        return False
    if t in ("nat", "nnreal") and compare(v, 0) < 0:
        return False
    if t == "pnat" and compare(v, 0) <= 0:
        return False
    return True


def _algebraic(e: sp.Expr) -> bool:
    """Polynomial / rational / radical in the unknowns: the equations sympy.solve finds every solution of."""
    for a in sp.preorder_traversal(e):
        if isinstance(a, sp.Pow):
            if a.exp.free_symbols or not a.exp.is_Rational:
                if a.free_symbols:
                    return False
        elif isinstance(a, (sp.Function, sp.Piecewise)) and a.free_symbols:
            return False
    return True


def _check_hyps(problem: Problem, values: dict[str, Any], witness: list | None = None) -> bool:
    """Every hypothesis that can be decided exactly under ``values`` holds (undecidable ones are ignored). When
    EVERY hypothesis was decided (and none was skipped at parse time), ``values`` is appended to ``witness``: an
    assignment that satisfies the whole statement's hypotheses."""
    env = Env(types=dict(problem.env.types), values=dict(values), funcs=problem.env.funcs,
              fun_types=problem.env.fun_types)
    ev = Evaluator(env)
    decided = problem.skipped_hyps == 0 and not problem.opaque
    for h in problem.hyps:
        try:
            if not ev.truth(h):
                return False
        except (Unsafe, TypeError, ValueError, ZeroDivisionError, RecursionError):
            decided = False
            continue
    if decided and witness is not None and all(is_num(v) for v in values.values()):
        witness.append(dict(values))
    return True


def _lhs_value(problem: Problem, values: dict[str, Any]):
    env = Env(types=dict(problem.env.types), values=dict(values), funcs=problem.env.funcs,
              fun_types=problem.env.fun_types)
    return Evaluator(env).value(problem.lhs, problem.answer_type)


def _unique(values: list) -> Any:
    if not values:
        raise Unsafe("no candidate satisfies the hypotheses")
    first = values[0]
    for v in values[1:]:
        if not equal(first, v):
            raise Unsafe(f"the hypotheses allow several values ({first}, {v})")
    return first


def _compute(problem: Problem, witness: list):
    if not problem.hyps and problem.skipped_hyps == 0 and not problem.opaque:
        witness.append({})
    env = Env(types=dict(problem.env.types), funcs=problem.env.funcs, fun_types=problem.env.fun_types,
              symbolic_apps=False)
    v = Evaluator(env).value(problem.lhs, problem.answer_type)
    if not is_num(v):
        raise Unsafe("the LHS is not closed")
    return v


def _solve(problem: Problem, witness: list):
    """Solve the algebraic equality hypotheses in every branch of Lean's total functions, check each discrete
    solution exactly against every hypothesis, and return the LHS's value when it is the same for all of them.

    Branches (their union holds every point Lean's hypotheses allow): the main one (denominators non-zero, every
    ``real.sqrt v`` of an unknown written t >= 0 with t^2 = v); for every subset of those square roots, t = 0 instead
    (v < 0, where Lean's sqrt is 0); for every symbolic denominator d, the solutions of d = 0 substituted into the
    hypotheses, which are then re-read with Lean's x / 0 = 0 and solved again (two levels deep). Only the main
    branch may leave a family of solutions (when the LHS is constant on it); elsewhere a family makes the
    discoverer abstain."""
    return _unique(_solve_values(problem, witness, {}, 0))


def _relevant(problem: Problem) -> set[str]:
    names = set(free_vars(problem.lhs))
    for h in problem.hyps:
        names |= free_vars(h)
    return names & set(problem.env.types)


def _solve_values(problem: Problem, witness: list, fixed: dict, depth: int) -> list:
    import itertools

    env = problem.env
    syms = {n: _symbol(n, t) for n, t in env.types.items()}
    senv = Env(types=dict(env.types), values={**syms, **fixed}, funcs=env.funcs, fun_types=env.fun_types)
    ev = Evaluator(senv)
    eqs: list[sp.Expr] = []
    for h in problem.hyps:
        if h[0] != "bin" or h[1] != "=":
            continue
        n_sqrt = len(ev.sqrt_symbols)
        try:
            t = _eq_type(ev, h)
            a, b = ev.value(h[2], t), ev.value(h[3], t)
        except (Unsafe, TypeError, ValueError, ZeroDivisionError, RecursionError):
            continue
        if isinstance(a, tuple) or isinstance(b, tuple):
            continue
        e = a - b
        if e.is_number:
            if fixed and not equal(e, 0):
                return []  # under this branch's values an equation is false: no point here
            continue
        if _algebraic(e):
            eqs.append(e)
        else:
            for k in list(ev.sqrt_symbols)[n_sqrt:]:  # roots of a dropped equation are not needed
                ev.sqrt_symbols.pop(k)
    lhs = ev.value(problem.lhs, problem.answer_type)
    if isinstance(lhs, tuple):
        raise Unsafe("tuple-valued LHS")
    roots = dict(ev.sqrt_symbols)
    if len(roots) > 4:
        raise Unsafe("more than 4 square roots of unknowns")
    dens = {sp.factor(d) for d in ev.denominators if d.free_symbols}
    if not eqs and not dens and not fixed:
        raise Unsafe("no algebraic equality hypothesis")
    relevant = _relevant(problem)
    values: list = []
    for k in range(len(roots) + 1):
        for zero in itertools.combinations(roots, k):
            system = eqs + [t for t in zero] + [t ** 2 - v for t, v in roots.items() if t not in zero]
            values += _branch(problem, witness, system, k == 0, lhs, syms, fixed, relevant, ev)
    for d in dens:
        if depth >= 2:
            raise Unsafe("denominators nested too deeply")
        try:
            with time_limit(SOLVE_SECONDS):
                zeros = sp.solve(sp.numer(sp.together(d)), sorted(d.free_symbols, key=str), dict=True)
        except NotImplementedError as exc:
            raise Unsafe(f"SymPy cannot solve {d} = 0") from exc
        for z in zeros:
            sub = {str(k): v for k, v in z.items()}
            if any(n not in env.types for n in sub):
                raise Unsafe(f"{d} = 0 involves a value that is not a variable")
            merged = {n: sp.sympify(v).subs(z) for n, v in fixed.items()}
            merged.update(sub)
            values += _solve_values(problem, witness, merged, depth + 1)
    return values


def _branch(problem, witness, system, main, lhs, syms, fixed, relevant, ev) -> list:
    env = problem.env
    system = [sp.expand(e) if not e.has(sp.Pow) else e for e in system]
    if any(e.is_number and e != 0 for e in system):
        return []  # the branch is inconsistent
    system = [e for e in system if not (e.is_number and e == 0)]
    unknowns = sorted(set().union(set(), *(e.free_symbols for e in system)), key=str)
    try:
        with time_limit(SOLVE_SECONDS):
            sols = sp.solve(system, unknowns, dict=True) if system else [{}]
    except NotImplementedError as exc:
        raise Unsafe(f"SymPy cannot solve {system}") from exc
    values = []
    for sol in sols:
        if not all(_in_domain(v, env.types.get(str(k), "real")) for k, v in sol.items()):
            continue
        full = {n: sp.sympify(fixed.get(n, syms[n])).subs(sol) for n in env.types}
        for key, sym in ev.app_symbols.items():
            full[key] = sp.sympify(sym).subs(sol)
        if not all(_in_domain(full[n], env.types[n]) for n in env.types):
            continue
        if any(not is_num(full[n]) for n in relevant) or any(not is_num(v) for k, v in full.items()
                                                              if k in ev.app_symbols):
            # a family of solutions: only a LHS constant on it is an answer, and only in the main branch
            if not main or fixed:
                raise Unsafe("a zero-denominator or negative-root branch leaves a family of solutions")
            if not _algebraic(lhs):
                raise Unsafe("the LHS is not algebraic on a family of solutions")
            val = sp.simplify(lhs.subs(sol))
            if val.free_symbols:
                raise Unsafe("the hypotheses leave the LHS undetermined")
            values.append(val)
            continue
        if not _check_hyps(problem, full, witness):
            continue
        val = _lhs_value(problem, full)
        if not is_num(val):
            raise Unsafe("the LHS depends on an unknown the hypotheses leave free")
        values.append(val)
    return values


def _eq_type(ev: Evaluator, h) -> str:
    from .leaneval import join

    return join(ev.infer(h[2]), ev.infer(h[3])) or "nat"


def _bounds(problem: Problem) -> dict[str, list]:
    out: dict[str, list] = {}
    for n, t in problem.env.types.items():
        out[n] = [0 if t in ("nat",) else 1 if t == "pnat" else None, None]
    ev = Evaluator(Env(types=dict(problem.env.types)))
    flip = {"<": ">", "≤": "≥", ">": "<", "≥": "≤"}
    for h in problem.hyps:
        for name, hi in _equation_bounds(problem, ev, h):
            if name in out:
                _tighten(out[name], None, hi)
        if h[0] != "bin" or h[1] not in ("<", "≤", ">", "≥", "∈"):
            continue
        op, a, b = h[1], h[2], h[3]
        if op == "∈":
            if a[0] == "var" and a[1] in out:
                try:
                    s = ev.finset(b, {})
                except Unsafe:
                    continue
                if s:
                    _tighten(out[a[1]], min(s), max(s))
            continue
        if b[0] == "var" and a[0] != "var":
            a, b, op = b, a, flip[op]
        if a[0] != "var" or a[1] not in out:
            continue
        try:
            c = ev.value(b, problem.env.types[a[1]])
        except Unsafe:
            continue
        if not (is_num(c) and c.is_real):
            continue
        if op in ("<", "≤"):
            hi = sp.floor(c) - (1 if op == "<" and c.is_integer else 0)
            _tighten(out[a[1]], None, hi)
        else:
            lo = sp.ceiling(c) + (1 if op == ">" and c.is_integer else 0)
            _tighten(out[a[1]], lo, None)
    return out


def _equation_bounds(problem: Problem, ev: Evaluator, h) -> list[tuple[str, Any]]:
    """Upper bounds of ℕ variables implied by an equation (or divisibility) with a positive constant, sound in ℕ:
    ``x * y * k = c`` (every factor is >= 1, so x <= c), ``x + k * y = c`` (every term is >= 0), ``nat.lcm x y = c``
    (x divides c), ``x ∣ c``."""
    if h[0] != "bin" or h[1] not in ("=", "∣"):
        return []
    nat = {n for n, t in problem.env.types.items() if t in ("nat", "pnat")}
    sides = [(h[2], h[3])] if h[1] == "∣" else [(h[2], h[3]), (h[3], h[2])]
    out = []
    for expr, const in sides:
        try:
            c = ev.value(const, "nat")
        except (Unsafe, TypeError, ValueError):
            continue
        if not (is_num(c) and c.is_Integer and c > 0):
            continue
        if h[1] == "∣":
            if expr[0] == "var" and expr[1] in nat:
                out.append((expr[1], c))
            continue
        if h[1] == "=" and _eq_type(ev, h) not in ("nat", "pnat"):
            continue
        for kind in ("*", "+"):
            parts = _flatten(expr, kind)
            if len(parts) < 2 and not (expr[0] == "app" and expr[1] == ("var", "nat.lcm")):
                continue
            if kind == "*" and all(p[0] == "num" or (p[0] == "var" and p[1] in nat) for p in parts):
                if not any(p[0] == "num" and int(p[1]) == 0 for p in parts):
                    out += [(p[1], c) for p in parts if p[0] == "var"]
            if kind == "+":
                for p in parts:
                    factors = _flatten(p, "*")
                    if all(f[0] == "num" or (f[0] == "var" and f[1] in nat) for f in factors):
                        vs = [f for f in factors if f[0] == "var"]
                        if len(vs) == 1 and all(f[0] == "var" or int(f[1]) >= 1 for f in factors):
                            out.append((vs[0][1], c))
        if expr[0] == "app" and expr[1] == ("var", "nat.lcm"):
            out += [(a[1], c) for a in expr[2] if a[0] == "var" and a[1] in nat]
    return out


def _flatten(node, op: str) -> list:
    if node[0] == "bin" and node[1] == op:
        return _flatten(node[2], op) + _flatten(node[3], op)
    return [node]


def _tighten(b: list, lo, hi) -> None:
    if lo is not None:
        b[0] = lo if b[0] is None else max(b[0], lo)
    if hi is not None:
        b[1] = hi if b[1] is None else min(b[1], hi)


def _enumerate(problem: Problem, witness: list):
    names = set(free_vars(problem.lhs))
    for h in problem.hyps:
        names |= free_vars(h)
    names &= set(problem.env.types)
    if not names:
        raise Unsafe("nothing to enumerate")
    if any(problem.env.types[n] not in INTEGRAL for n in names):
        raise Unsafe("a non-integer unknown")
    bounds = _bounds(problem)
    ranges = []
    total = 1
    for n in sorted(names):
        lo, hi = bounds[n]
        if lo is None or hi is None:
            raise Unsafe(f"{n} is unbounded")
        ranges.append((n, range(int(lo), int(hi) + 1)))
        total *= max(int(hi) - int(lo) + 1, 0)
        if total > MAX_ENUM:
            raise Unsafe("too many assignments to enumerate")
    import itertools

    values = []
    for combo in itertools.product(*(r for _, r in ranges)):
        vals = {n: sp.Integer(v) for (n, _), v in zip(ranges, combo)}
        if _check_hyps(problem, vals, witness):
            values.append(_lhs_value(problem, vals))
    return _unique(values)


def discover_sympy(problem: Problem, *, seconds: float = SOLVE_SECONDS) -> Discovery:
    """Run compute → solve → enumerate; the first that yields a unique value is the answer."""
    t0 = time.perf_counter()
    src = problem.stmt.source
    reasons = []
    if problem.lhs is None:
        return Discovery(problem.stmt.name, src, "abstain", reason="the conclusion does not parse")
    for method, fn in (("compute", _compute), ("solve", _solve), ("enumerate", _enumerate)):
        witness: list = []
        try:
            with time_limit(seconds):
                v = fn(problem, witness)
                v = canonical(v)
        except (Unsafe, DiscoverTimeout, NotImplementedError, TypeError, ValueError, ZeroDivisionError,
                RecursionError, AttributeError, KeyError, IndexError) as exc:
            reasons.append(f"{method}: {type(exc).__name__}: {exc}"[:160])
            continue
        d = Discovery(problem.stmt.name, src, "abstain", method, v, seconds=time.perf_counter() - t0)
        d.status = grade(problem, d.answer)
        if d.status == "wrong" and witness:
            # an assignment satisfying every hypothesis exactly gives the LHS a value other than the gold constant:
            # the Easy statement itself is false (a counterexample), so the disagreement is not a discovery error
            d.status = "gold_false"
            d.reason = (f"counterexample to the gold statement: {_fmt(witness[0])} satisfies every hypothesis "
                        f"and gives {problem.hard.lhs} = {to_lean(v)}, not {problem.hard.gold}")
        return d
    return Discovery(problem.stmt.name, src, "abstain", reason="; ".join(reasons), seconds=time.perf_counter() - t0)


def _fmt(values: dict) -> str:
    return "{" + ", ".join(f"{k} = {sp.sstr(v)}" for k, v in sorted(values.items())) + "}" if values else \
        "the empty assignment (no hypotheses)"


def canonical(v):
    """A readable exact form of a closed value: a rational when it provably equals one with a small denominator,
    else SymPy's simplification (left as is when that fails)."""
    if not is_num(v):
        raise Unsafe("not a closed number")
    if v.is_Rational:
        return v
    if v.is_Float:
        return sp.nsimplify(v, rational=True)
    try:
        r = sp.nsimplify(sp.N(v, 80), rational=True, tolerance=sp.Rational(1, 10 ** 50))
        if r.is_Rational and r.q < 10 ** 9 and equal(v, r):
            return r
    except (Unsafe, TypeError, ValueError):
        pass
    try:
        s = sp.radsimp(sp.simplify(v))
        return s if is_num(s) else v
    except (TypeError, ValueError):
        return v


def grade(problem: Problem, answer) -> str:
    """recovered / wrong against the gold constant (abstain when either side is missing or undecidable)."""
    if answer is None or problem.gold is None:
        return "abstain"
    try:
        return "recovered" if equal(answer, problem.gold) else "wrong"
    except Unsafe:
        return "abstain"


def to_lean(v) -> str:
    """A SymPy number as a Lean 3 term: ``-39``, ``3 / 7``, ``real.sqrt 10``, else SymPy's own text."""
    if isinstance(v, sp.Integer):
        return str(int(v))
    if isinstance(v, sp.Rational):
        return f"{v.p} / {v.q}" if v.p >= 0 else f"-({-v.p} / {v.q})"
    if isinstance(v, sp.Pow) and v.exp == sp.Rational(1, 2) and v.base.is_Integer:
        return f"real.sqrt {v.base}"
    return str(v)


# ------------------------------------------------------------------------------------------------ "prove"
def check_answer(problem: Problem, answer, forced=None) -> tuple[bool | None, str]:
    """Substitute ``answer`` for the placeholder and check the conclusion (the stand-in for Lean). ``forced`` is
    the value the hypotheses force (from :func:`discover_sympy`; computed when omitted). Returns (ok, why): ok is
    None when nothing can be checked."""
    if forced is None:
        d = discover_sympy(problem)
        forced = d.answer
    if forced is None:
        return None, "the hypotheses do not determine the LHS in SymPy: cannot check"
    try:
        if equal(answer, forced):
            return True, "the conclusion holds after substitution"
        direction = ""
        try:
            direction = " (the true value is larger)" if compare(forced, answer) > 0 else \
                " (the true value is smaller)"
        except (Unsafe, TypeError):
            pass
        return False, (f"substituting {to_lean(answer)} for {problem.hard.placeholder} makes the conclusion "
                       f"`{problem.hard.lhs} = {to_lean(answer)}` false under the hypotheses{direction}")
    except Unsafe as exc:
        return None, f"cannot decide: {exc}"


# ------------------------------------------------------------------------------------------------ LM discovery
Chat = Callable[[list[dict]], str]
_NUM_RE = re.compile(r"(-?\s*\d+(?:\.\d+)?)(?:\s*/\s*(\d+))?")

SYSTEM = "You are a careful competition mathematician. Answer with a single number."


def parse_last_number(text: str):
    """The last number in a reply (``-3``, ``2.5``, ``7/25``) as an exact SymPy number, or None."""
    found = list(_NUM_RE.finditer(text.replace(",", "")))
    if not found:
        return None
    m = found[-1]
    num = sp.Rational(m.group(1).replace(" ", ""))
    return num / int(m.group(2)) if m.group(2) and int(m.group(2)) != 0 else num


_TYPE_WORDS = {"ℝ": "a real number", "ℕ": "a natural number", "ℕ+": "a positive integer", "ℤ": "an integer",
               "ℚ": "a rational number", "ℂ": "a complex number", "nnreal": "a non-negative real number"}


def prompt(problem: Problem) -> list[dict]:
    """The question put to the chat model: the Hard statement read out as variables, facts (the hypotheses, in
    Lean's notation) and the expression whose value is asked for — plainer for a small model than Lean's syntax."""
    st, h = problem.stmt, problem.hard
    by_type: dict[str, list[str]] = {}
    for b in st.variables:
        by_type.setdefault(b.type, []).append(b.name)
    def word(t: str, n: int) -> str:
        w = _TYPE_WORDS.get(t)
        if w is None:
            return t
        return w if n == 1 else w.split(" ", 1)[1] + "s"

    lines = [f"{', '.join(names)}: {word(t, len(names))}" for t, names in by_type.items()]
    facts = [b.type for b in st.hypotheses]
    text = ("Solve the problem.\n" + (f"Variables: {'; '.join(lines)}.\n" if lines else "")
            + (f"Facts: {'; '.join(facts)}.\n" if facts else "")
            + f"Find the value of {h.lhs} ({_TYPE_WORDS.get(h.answer_type, h.answer_type)}).\n"
            + "Think briefly, then end with \"The answer is N.\"")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


@dataclass
class LMResult:
    name: str
    source: str
    status: str  # recovered | wrong | abstain (no number in the reply)
    answer: Any = None
    rounds: int = 1
    transcript: list[dict] = field(default_factory=list)


def single_shot(chat: Chat, problem: Problem) -> LMResult:
    msgs = prompt(problem)
    reply = chat(msgs)
    ans = parse_last_number(reply)
    return LMResult(problem.stmt.name, problem.stmt.source, grade(problem, ans) if ans is not None else "abstain",
                    ans, 1, msgs + [{"role": "assistant", "content": reply}])


def discovery_loop(chat: Chat, problem: Problem, *, rounds: int = 5, forced=None) -> LMResult:
    """Propose → substitute-and-check → "your answer X fails because ..., correct it", at most ``rounds``
    proposals. Stops at the first answer that passes the check, or that cannot be checked; the answer is the last
    proposal that had a number."""
    if rounds < 1:
        raise ValueError(f"rounds={rounds}: need at least 1")
    msgs = prompt(problem)
    ans, k = None, 0
    for k in range(1, rounds + 1):
        reply = chat(msgs)
        msgs = msgs + [{"role": "assistant", "content": reply}]
        proposed = parse_last_number(reply)
        ans = proposed if proposed is not None else ans  # a reply without a number keeps the last proposal
        if proposed is None:
            why = "your reply has no number"
        else:
            ok, why = check_answer(problem, ans, forced)
            if ok or ok is None:
                break
        if k == rounds:
            break
        msgs = msgs + [{"role": "user", "content": f"Your answer {to_lean(ans) if ans is not None else ''} fails "
                                                   f"because {why}. Correct it and end with \"The answer is N.\""}]
    return LMResult(problem.stmt.name, problem.stmt.source, grade(problem, ans) if ans is not None else "abstain",
                    ans, k, msgs)
