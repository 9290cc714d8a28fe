"""The TRIGO gym (Xiong et al., EMNLP 2023, arXiv 2310.10180) with SymPy standing in for Lean 3.

State: the two sides of ``lhs = rhs`` as unevaluated SymPy trees (:class:`TrigoState`), kept canonical (every
side is what :func:`~morphlm.reason.trigo_expr.parse_expr` reads back from its own Lean text, so a subterm
printed by the gym is found again when a policy names it).

Action (:class:`Action`): a rule of the bank (:mod:`morphlm.reason.trigo_rules`) or a helper, a direction, a
side and the *target subterm as Lean text*. One line of text, which an LM policy emits and
:meth:`Action.from_text` parses::

    RULE -> SIDE : SUBTERM          apply RULE left-to-right at SUBTERM
    RULE <- SIDE K=k : SUBTERM      right-to-left, with the integer K of an induction formula
    field_calc -> SIDE : OLD ==> NEW    replace OLD by an algebraically equal NEW (TRIGO's field_calc)

e.g. ``sin_two_mul <- lhs : 2*sin(x)*cos(x)``, ``cos_eq_cos_add_int_mul_two_pi <- rhs K=88 : cos(349*pi/2)``.
SUBTERM is a subterm of the side, or (for sums and products) some of the terms/factors of one, in the
rule's order: ``sin_add_sin -> lhs : sin(x) + sin(y)`` rewrites inside ``1 + sin(x) + sin(y)``. The rule's
variables are solved from the match: trig arguments by linear solving on their values (so ``sin_two_mul``
matches ``sin(pi/3)`` with X = pi/6, as Lean's ``congr_arg, ring`` would), ``X + Y`` splits at the first term,
and an induction formula's integer K, when the action gives none, is solved to bring the new angle's
multiple of π nearest to 0 (``tan(5*pi/3)`` → ``-tan(pi/3)`` with K = 2). A whole-subterm rewrite replaces
every occurrence, as Lean's ``rw`` does.

:meth:`Gym.step` raises :class:`RuleMismatch` when the rule does not match there and :class:`GuardError` when
the rewrite changes a side's value (the numeric guard: 40-digit evaluation at random points, Lean's total
division). :meth:`Gym.is_closed` never evaluates a trig function: every call becomes an opaque atom, then
rational cancellation with radicals rationalised (Lean's ``ring``/``field_simp``), so special values count only
when a value rule produced them.

:func:`to_lean` writes a proof as a Lean 3 tactic script in TRIGO's style (``have : old = new, {tactics},
conv {to_lhs, rw this},``). **It cannot be checked here** (no Lean): the inner tactics are the ones TRIGO's
generator emits for the rule, and a human or a Lean install must confirm them. :func:`from_lean` parses such a
script back into the same gym actions."""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass
from typing import Iterator, Optional

import sympy as sp
from sympy import Add, Integer, Mul, Pow, Rational

from .trigo_data import Statement, parse_statement
from .trigo_expr import (TRIG_FUNCS, TrigoError, TrigoParseError, _is_trig, add, is_zero_symbolic, mul, neg,
                         numerically_equal, parse_expr, power, rebuild, to_lean as expr_to_lean)
from .trigo_rules import BY_NAME, HELPERS, Rule

_X, _Y, _N = sp.Symbol("X", real=True), sp.Symbol("Y", real=True), sp.Symbol("n", real=True)
_WILDS = (_X, _Y, _N)


class RuleMismatch(TrigoError):
    """A rule applied where it does not match (or a target subterm that is not in the side)."""


class GuardError(TrigoError):
    """A step refused by the numeric guard: it would change a side's value."""


class ActionSyntaxError(TrigoError):
    """Action text that is not ``RULE ->|<- lhs|rhs [K=k] : SUBTERM`` or names no known rule."""


def canon(e):
    """The canonical form of a tree: what the parser reads back from its Lean text."""
    return parse_expr(expr_to_lean(e))


@dataclass(frozen=True)
class TrigoState:
    """Both sides of the goal ``lhs = rhs`` (canonical unevaluated SymPy trees)."""

    lhs: object
    rhs: object

    @classmethod
    def make(cls, lhs, rhs) -> "TrigoState":
        return cls(canon(lhs), canon(rhs))

    @classmethod
    def from_text(cls, text: str) -> "TrigoState":
        st = parse_statement(text)
        return cls.make(st.lhs, st.rhs)

    def to_text(self) -> str:
        """The goal as one Lean line, ``lhs = rhs`` (the policy's prompt)."""
        return self._text

    @functools.cached_property
    def _text(self) -> str:  # printed once per state (a search keys its memo and dedup on it)
        return f"{expr_to_lean(self.lhs)} = {expr_to_lean(self.rhs)}"

    def side(self, name: str):
        if name not in ("lhs", "rhs"):
            raise ActionSyntaxError(f"side {name!r} is neither 'lhs' nor 'rhs'")
        return self.lhs if name == "lhs" else self.rhs

    def replace(self, name: str, new) -> "TrigoState":
        return TrigoState(canon(new), self.rhs) if name == "lhs" else TrigoState(self.lhs, canon(new))


def goal_state(goal: str) -> TrigoState:
    """The first goal of a pretty-printed Lean 3 tactic state (a TG-REAL ``GOAL`` field: hypotheses, ``⊢ lhs =
    rhs``, further goals after two spaces) as a gym state; :class:`TrigoParseError` when it is not an equation
    the parser reads (e.g. ``cos x ≠ 0`` side goals, ``no goals``)."""
    if "⊢" not in goal:
        raise TrigoParseError(f"no '⊢' in the goal {goal[:80]!r}")
    rest = goal.split("⊢", 1)[1]
    # the next goal starts after two or more spaces with hypothesis names and a colon (`  this : ...`)
    first = " ".join(re.split(r"\s{2,}(?=[^\s:()]+(?: [^\s:()]+)* : )", rest, maxsplit=1)[0].split())
    try:
        st = parse_statement(first)
    except TrigoError as exc:
        raise TrigoParseError(f"goal {first[:80]!r} is not an equation the gym reads: {exc}") from None
    return TrigoState.make(st.lhs, st.rhs)


_ACTION = re.compile(r"^\s*(?P<rule>\S+)\s+(?P<dir>->|<-)\s+(?P<side>lhs|rhs)(?:\s+K=(?P<k>-?\d+))?"
                     r"\s*:\s*(?P<target>.+?)\s*$")


@dataclass(frozen=True)
class Action:
    """``rule`` (a bank rule or a helper), ``reverse`` (right-to-left), ``side``, ``target`` (Lean text of the
    subterm), ``k`` (an induction formula's integer, or None to solve it)."""

    rule: str
    reverse: bool
    side: str
    target: str
    k: Optional[int] = None

    def to_text(self) -> str:
        k = f" K={self.k}" if self.k is not None else ""
        return f"{self.rule} {'<-' if self.reverse else '->'} {self.side}{k} : {self.target}"

    @classmethod
    def from_text(cls, s: str) -> "Action":
        m = _ACTION.match(s)
        if not m:
            raise ActionSyntaxError(f"action {s.strip()!r} is not 'RULE ->|<- lhs|rhs [K=k] : SUBTERM' "
                                    "(e.g. 'sin_two_mul -> lhs : sin(2*x)')")
        rule = m.group("rule")
        if rule not in BY_NAME and rule not in HELPERS:
            raise ActionSyntaxError(f"action {s.strip()!r}: unknown rule {rule!r} (see morphlm.reason.trigo_rules)")
        return cls(rule, m.group("dir") == "<-", m.group("side"), m.group("target"),
                   int(m.group("k")) if m.group("k") is not None else None)

    def __str__(self) -> str:
        return self.to_text()


# ---------------------------------------------------------------- matching

@functools.lru_cache(maxsize=4096)
def _is_const_template(t) -> bool:
    return not (t.free_symbols & set(_WILDS)) and not t.atoms(*TRIG_FUNCS)


def _has_trig(e) -> bool:
    if _is_trig(e):
        return True
    return any(_has_trig(a) for a in e.args)


def _nested_all(t, s, eqs: list) -> Iterator[list]:
    """Every structural match of template ``t`` against subject ``s`` (commutative nodes in any order), as the
    argument equations it adds to ``eqs``."""
    if _is_trig(t):
        if _is_trig(s) and s.func == t.func:
            yield eqs + [(t.args[0], s.args[0])]
        return
    if t in _WILDS:
        yield eqs + [(t, s)]
        return
    if _is_const_template(t):
        if s.free_symbols or _has_trig(s):
            return
        try:
            d = rebuild(t) - rebuild(s)
            if d == 0 or (abs(complex(sp.N(d, 20))) <= 1e-12 and sp.expand(sp.radsimp(d)) == 0):
                yield eqs
        except (TypeError, ValueError, ZeroDivisionError):
            return
        return
    if type(t) is not type(s) or len(t.args) != len(s.args):
        return
    if isinstance(t, (Add, Mul)) and len(t.args) <= 4:
        for perm in itertools.permutations(s.args):
            yield from _seq_all(list(zip(t.args, perm)), eqs)
        return
    yield from _seq_all(list(zip(t.args, s.args)), eqs)


def _seq_all(pairs: list, eqs: list) -> Iterator[list]:
    if not pairs:
        yield eqs
        return
    (ta, sa), rest = pairs[0], pairs[1:]
    for out in _nested_all(ta, sa, eqs):
        yield from _seq_all(rest, out)


def _nested(t, s, eqs: list) -> Optional[list]:
    """The first structural match (see :func:`_nested_all`), or None."""
    return next(_nested_all(t, s, eqs), None)


def _numeric_part(args) -> tuple:
    num, rest = Integer(1), []
    for a in args:
        if isinstance(a, sp.Number):
            num *= a
        elif isinstance(a, Pow) and isinstance(a.base, sp.Number) and a.exp == -1 and a.base != 0:
            num *= 1 / a.base  # (1/0 is Lean's 0, not a coefficient: it stays a factor)
        else:
            rest.append(a)
    return num, rest


@dataclass
class _Match:
    eqs: list
    coeff: object  # leftover numeric factor (a product template matched a multiple of itself)
    picked: Optional[tuple]  # indices of the node's args taken (a part of a sum/product), None = whole node


def _top_matches(t, s, order: Optional[tuple] = None) -> Iterator[_Match]:
    """Every way template ``t`` matches at node ``s``: whole node, or some terms of a sum / factors of a product.
    ``order`` fixes which of the node's args (in the template's order) are taken. A constant template (a
    value rule read right-to-left) matches only a whole node of the same value."""
    if _is_const_template(t):
        if order is None and _nested(t, s, []) is not None:
            yield _Match([], Integer(1), None)
        return
    if isinstance(t, Add) and isinstance(s, Add) and len(s.args) >= len(t.args):
        sels = [order] if order is not None else itertools.permutations(range(len(s.args)), len(t.args))
        for sel in sels:
            for eqs in _seq_all([(ta, s.args[i]) for ta, i in zip(t.args, sel)], []):
                yield _Match(eqs, Integer(1), None if len(sel) == len(s.args) else tuple(sel))
        return
    if isinstance(t, Mul):
        c, tf = _numeric_part(t.args)
        sargs = s.args if isinstance(s, Mul) else (s,)
        d, _ = _numeric_part(sargs)
        nonnum = [i for i, a in enumerate(sargs) if _numeric_part((a,))[1]]
        if len(nonnum) < len(tf) or not tf or d == 0 or (c < 0 < d):
            return  # a negative template needs a negative subject (no `sin a = -(-sin a)` spam)
        sels = [order] if order is not None else itertools.permutations(nonnum, len(tf))
        for sel in sels:
            if any(i not in nonnum for i in sel):
                continue
            whole = len(sel) == len(nonnum) or not isinstance(s, Mul)
            for eqs in _seq_all([(ta, sargs[i]) for ta, i in zip(tf, sel)], []):
                yield _Match(eqs, d / c, None if whole else tuple(sel))
        return
    if order is None:
        for eqs in _nested_all(t, s, []):
            yield _Match(eqs, Integer(1), None)


def _pi_coeff(e) -> object:
    return sp.expand(e).coeff(sp.pi)


def _linsolve(system: list, unknowns: list) -> Optional[dict]:
    """Gaussian elimination on equations linear in ``unknowns`` (coefficients may hold pi); an unknown left free
    is absent from the result; None when inconsistent."""
    eqs = [sp.expand(e) for e in system]
    pivots: list = []
    sol: dict = {}
    for w in unknowns:
        for i, e in enumerate(eqs):
            c = e.coeff(w)
            if c != 0:
                expr = sp.expand(-(e - c * w) / c)
                sol[w] = expr
                pivots.append(w)
                eqs = [sp.expand(f.xreplace({w: expr})) for j, f in enumerate(eqs) if j != i]
                break
    if any(e != 0 for e in eqs):
        return None
    for w in reversed(pivots):
        sol[w] = sp.expand(sol[w].xreplace({v: sol[v] for v in pivots if v != w and v in sol[w].free_symbols}))
    return sol


def _solve(eqs: list, k: Optional[int], out_template) -> Optional[dict]:
    """Solve the wilds from ``template_arg = subject_arg`` equations (linear); None when inconsistent."""
    pairs = [(ta, sp.expand(rebuild(sa))) for ta, sa in eqs]
    unknown = [w for w in _WILDS if any(w in ta.free_symbols for ta, _ in pairs)]
    bind: dict = {}
    if k is not None:
        bind[_N] = Integer(k)
    # X + Y against a sum with only one equation: X takes the subject's first term
    for ta, sa_raw in zip([p[0] for p in pairs], [e[1] for e in eqs]):
        if _X in ta.free_symbols and _Y in ta.free_symbols and len(pairs) == 1:
            if not isinstance(sa_raw, Add):
                return None
            bind[_X] = sp.expand(rebuild(sa_raw.args[0]))
    rest = [w for w in unknown if w not in bind]
    system = [sp.expand(rebuild(ta).xreplace(bind)) - sv for ta, sv in pairs]
    if rest:
        sol = _linsolve(system, rest)
        if sol is None:
            return None
        for w in rest:
            bind[w] = sol.get(w, w)
        free_n = _N in rest and any(_N in sp.sympify(v).free_symbols for w, v in bind.items() if w != _N)
        if _N in rest and (bind[_N] == _N or free_n):
            # the induction integer is free: the input side's X(n) as close to 0 (in multiples of pi) as it gets
            xv = bind.get(_X, _X)
            a, b = _pi_coeff(xv.subs(_N, 0)), _pi_coeff(sp.expand(xv).coeff(_N))
            if b == 0:
                return None
            n = int(sp.floor(-a / b + Rational(1, 2)))
            bind = {w: sp.expand(sp.sympify(v).subs(_N, n)) for w, v in bind.items()}
            bind[_N] = Integer(n)
        if any(sp.sympify(v).free_symbols & set(_WILDS) for v in bind.values()):
            return None  # under-determined (a wild still free)
    else:
        if any(sp.expand(e) != 0 for e in system):
            return None
    if _N in bind and not (bind[_N].is_integer or sp.sympify(bind[_N]).is_Integer):
        return None
    if any(w not in bind for w in (_X, _Y) if w in out_template.free_symbols):
        return None  # e.g. `1 → sin(X)**2 + cos(X)**2`: nothing fixes X
    # the integer of an induction formula that sits only in the output: its new angle nearest to 0
    if _N not in bind and _N in out_template.free_symbols:
        arg = next(c.args[0] for c in sp.preorder_traversal(out_template)
                   if _is_trig(c) and _N in c.args[0].free_symbols)
        av = sp.expand(rebuild(arg).xreplace(bind))
        a, b = _pi_coeff(av.subs(_N, 0)), _pi_coeff(av.coeff(_N))
        bind[_N] = Integer(int(sp.floor(-a / b + Rational(1, 2)))) if b != 0 else Integer(0)
    return bind


def _inst(t, bind: dict):
    """The template ``t`` with the wilds bound (trig arguments evaluated, the rest left unevaluated)."""
    if _is_trig(t):
        return t.func(sp.expand(rebuild(t.args[0]).xreplace(bind)))
    if t in bind:
        return bind[t]
    if not t.args:
        return t
    args = [_inst(a, bind) for a in t.args]
    if isinstance(t, Add):
        return add(*args)
    if isinstance(t, Mul):
        return mul(*args)
    if isinstance(t, Pow):
        return power(*args)
    return t.func(*args, evaluate=False)


# ---------------------------------------------------------------- tree navigation

def _nodes(e, path=()) -> Iterator[tuple]:
    """Preorder (node, path)."""
    yield e, path
    if _is_trig(e):
        return  # the argument of a trig call is an angle, never rewritten in place
    for i, a in enumerate(e.args):
        yield from _nodes(a, path + (i,))


def _postorder(e, path=()) -> Iterator[tuple]:
    if not _is_trig(e):
        for i, a in enumerate(e.args):
            yield from _postorder(a, path + (i,))
    yield e, path


def _get(e, path):
    for i in path:
        e = e.args[i]
    return e


def _rebuild_node(e, args):
    if isinstance(e, Add):
        return add(*args)
    if isinstance(e, Mul):
        return mul(*args)
    if isinstance(e, Pow):
        return power(*args)
    if isinstance(e, sp.Abs):
        return sp.Abs(args[0], evaluate=False)
    return e.func(*args)


def _set(e, path, new):
    if not path:
        return new
    args = list(e.args)
    args[path[0]] = _set(args[path[0]], path[1:], new)
    return _rebuild_node(e, args)


def _replace_all(e, old, new):
    if e == old:
        return new
    if not e.args or _is_trig(e):
        return e
    args = [_replace_all(a, old, new) for a in e.args]
    return e if all(a is b for a, b in zip(args, e.args)) else _rebuild_node(e, args)


def _sub_multiset(part: tuple, whole: tuple) -> Optional[tuple]:
    """Indices of ``whole`` that hold ``part``'s items, in ``part``'s order, or None."""
    used: list[int] = []
    for p in part:
        for i, w in enumerate(whole):
            if i not in used and w == p:
                used.append(i)
                break
        else:
            return None
    return tuple(used)


def _locate(side, target) -> tuple:
    """(path, picked) of ``target`` inside ``side``: a whole node, or some args of a sum/product."""
    for node, path in _nodes(side):
        if node == target:
            return path, None
    if _is_trig(target):  # the same call with its angle written another way: sin(10*pi - pi) names sin(9*pi)
        angle = sp.expand(rebuild(target.args[0]))
        for node, path in _nodes(side):
            if _is_trig(node) and node.func == target.func and sp.expand(rebuild(node.args[0])) == angle:
                return path, None
    if isinstance(target, (Add, Mul)):  # the same sum/product written in another order
        for node, path in _nodes(side):
            if type(node) is type(target) and len(node.args) == len(target.args) \
                    and _sub_multiset(target.args, node.args) is not None:
                return path, None
    if isinstance(target, Add):
        for node, path in _nodes(side):
            if isinstance(node, Add) and len(node.args) > len(target.args):
                picked = _sub_multiset(target.args, node.args)
                if picked is not None:
                    return path, picked
    if isinstance(target, Mul):  # some factors of a product; its numerals are the match's business
        want = tuple(a for a in target.args if not isinstance(a, sp.Number))
        for node, path in _nodes(side):
            if isinstance(node, Mul) and want:
                picked = _sub_multiset(want, node.args)
                if picked is not None and len(picked) < len(node.args):
                    return path, picked
    raise RuleMismatch(f"subterm {expr_to_lean(target)!r} is not in {expr_to_lean(side)!r}")


def _place(side, path, node, picked, new):
    """``side`` with ``new`` in place of the matched part: every occurrence of a whole node, or the picked
    terms/factors (with a product's numerals, which went into the match's coefficient) of one node."""
    if picked is None:
        return _replace_all(side, node, new)
    keep = [a for i, a in enumerate(node.args) if i not in picked
            and not (isinstance(node, Mul) and not _numeric_part((a,))[1])]
    return _set(side, path, _rebuild_node(node, keep + [new]))


def _part(node, picked):
    """The matched part of a node: the node, some terms of a sum, or some factors of a product with all its
    numerals (they go into the match's coefficient)."""
    if picked is None:
        return node
    if isinstance(node, Mul):
        nums = [a for a in node.args if isinstance(a, sp.Number)]
        return _rebuild_node(node, nums + [node.args[i] for i in picked if not isinstance(node.args[i], sp.Number)])
    return _rebuild_node(node, [node.args[i] for i in picked])


# ---------------------------------------------------------------- the gym

@dataclass
class Gym:
    """Actions and transitions over :class:`TrigoState`. ``guard_points``: random points of the numeric guard
    (0 turns it off); ``helpers``: whether :meth:`actions` lists the algebra helpers."""

    guard_points: int = 2
    helpers: bool = True
    seed: int = 0

    # -- rule application at one node
    def _apply_rule(self, rule: Rule, reverse: bool, node, picked, k: Optional[int]):
        src, dst = (rule.rhs, rule.lhs) if reverse else (rule.lhs, rule.rhs)
        order = picked
        if picked is not None and isinstance(src, Mul):
            # the picked factors include numerals; keep only the non-numeric ones, in the template's order
            order = tuple(i for i in picked if _numeric_part((node.args[i],))[1])
        for m in _top_matches(src, node, order):
            bind = _solve(m.eqs, k, dst)
            if bind is None:
                continue
            new = _inst(dst, bind)
            if m.coeff != 1:
                new = mul(m.coeff, new)
            return m, new, bind
        return None

    def _helper(self, name: str, sub):
        if name == "ring_nf":
            return sp.cancel(rebuild(sub))
        if name == "expand":
            return sp.expand(rebuild(sub))
        if name in ("abs_pos", "abs_neg"):
            if not isinstance(sub, sp.Abs):
                raise RuleMismatch(f"{name} needs abs(A), got {expr_to_lean(sub)!r}")
            return sub.args[0] if name == "abs_pos" else neg(sub.args[0])
        if name == "sqrt_sq":
            if not (isinstance(sub, Pow) and sub.exp == Rational(1, 2) and isinstance(sub.base, Pow)
                    and sub.base.exp == 2):
                raise RuleMismatch(f"sqrt_sq needs sqrt(A**2), got {expr_to_lean(sub)!r}")
            return sp.Abs(sub.base.base, evaluate=False)
        raise ActionSyntaxError(f"unknown helper {name!r}")

    @staticmethod
    def _scaled(node, picked, target, new):
        """``new`` for ``target``, scaled to the node's numerals when ``target`` names factors of a product whose
        numerals differ from the target's (``sin(x)*cos(x) ==> ...`` inside ``-2*sin(x)*cos(x)*y``)."""
        if picked is None or not isinstance(node, Mul):
            return new
        tnum, _ = _numeric_part(target.args if isinstance(target, Mul) else (target,))
        dnum, _ = _numeric_part([a for a in node.args if isinstance(a, sp.Number)])
        return new if dnum == tnum else mul(dnum / tnum, new)

    def substitute(self, state: TrigoState, side: str, old_text: str, new_text: str) -> TrigoState:
        """``old_text`` replaced by ``new_text`` in ``side`` as :meth:`rewrite` places a replacement (every
        occurrence of a whole subterm; numerals of a product kept), without any check."""
        sd = state.side(side)
        target = canon(parse_expr(old_text))
        path, picked = _locate(sd, target)
        node = _get(sd, path)
        new = self._scaled(node, picked, target, canon(parse_expr(new_text)))
        return state.replace(side, _place(sd, path, node, picked, new))

    def rewrite(self, state: TrigoState, action: Action) -> tuple:
        """(new state, the replaced subterm, its replacement, the solved K) without the guard."""
        side = state.side(action.side)
        target_text, new_text = action.target, None
        if action.rule == "field_calc":
            if " ==> " not in target_text:
                raise ActionSyntaxError(f"action {action.to_text()!r}: field_calc needs 'OLD ==> NEW'")
            target_text, new_text = (t.strip() for t in target_text.split(" ==> ", 1))
        try:
            target = canon(parse_expr(target_text))
            new_given = canon(parse_expr(new_text)) if new_text is not None else None
        except TrigoParseError as exc:
            raise ActionSyntaxError(f"action {action.to_text()!r}: {exc}") from None
        path, picked = _locate(side, target)
        node = _get(side, path)
        part = _part(node, picked)
        # a trig call named with its angle written another way is matched as written: `cos(-pi - pi/2)` lets
        # cos_sub split the angle of cos(-3*pi/2) (TRIGO's `have : cos(-3*pi/2) = cos(-pi - pi/2), congr_arg`);
        # so is a sum/product named in another order (`cos(b)*cos(a)` binds X = b in cos_mul_cos)
        written = target if picked is None and (isinstance(target, (Add, Mul)) or _is_trig(target)) else None
        written = written if written is not None and target != node else None
        if written is not None:
            part = written
        kk = action.k
        if action.rule == "field_calc":
            old = target if picked is not None and isinstance(node, Mul) else part
            if not is_zero_symbolic(add(old, neg(new_given))):
                raise RuleMismatch(f"field_calc: {expr_to_lean(old)!r} and {expr_to_lean(new_given)!r} are not "
                                   "equal as rational functions of the trig calls (no trig evaluation here)")
            new = self._scaled(node, picked, target, new_given)
        elif action.rule in HELPERS:
            new = self._helper(action.rule, part)
        else:
            rule = BY_NAME.get(action.rule)
            if rule is None:
                raise ActionSyntaxError(f"unknown rule {action.rule!r}")
            res = self._apply_rule(rule, action.reverse, written if written is not None else node, picked,
                                   action.k)
            if res is None:
                raise RuleMismatch(f"{action.rule} ({'right-to-left' if action.reverse else 'left-to-right'}: "
                                   f"{rule.rhs_text if action.reverse else rule.lhs_text}) does not match "
                                   f"{expr_to_lean(part)!r}")
            _, new, bind = res
            if rule.periodic:
                kk = int(bind[_N])
        return state.replace(action.side, _place(side, path, node, picked, new)), part, new, kk

    def step(self, state: TrigoState, action: Action) -> TrigoState:
        """Apply ``action``; :class:`RuleMismatch` if it does not match, :class:`GuardError` if the numeric guard
        finds the side's value changed, :class:`RuleMismatch` also when nothing changes."""
        new_state, part, new, _ = self.rewrite(state, action)
        old_side, new_side = state.side(action.side), new_state.side(action.side)
        if new_side == old_side:
            raise RuleMismatch(f"{action.to_text()!r} leaves the goal unchanged")
        if self.guard_points and not numerically_equal(old_side, new_side, total=True,
                                                       points=self.guard_points, seed=self.seed):
            raise GuardError(f"{action.to_text()!r} changes the value of the {action.side} "
                             f"({expr_to_lean(part)} → {expr_to_lean(new)}); refused")
        return new_state

    def _applies(self, state: TrigoState, action: Action) -> bool:
        try:
            new_state = self.rewrite(state, action)[0]
        except TrigoError:
            return False
        return new_state != state

    def is_closed(self, state: TrigoState) -> bool:
        """Both sides equal as rational functions of opaque trig atoms (no trig evaluation; Lean's ``x/0 = 0``
        where a denominator is exactly 0)."""
        if state.lhs == state.rhs:
            return True
        return is_zero_symbolic(add(state.lhs, neg(state.rhs)))

    def actions(self, state: TrigoState, rules=None) -> list[Action]:
        """Every rule application that matches somewhere (both directions, both sides), induction formulas
        with K solved; then the helpers (``ring_nf``/``expand`` on a whole side, the abs/sqrt helpers where
        they apply). The guard is not run here: :meth:`step` may still refuse one."""
        out: list[Action] = []
        seen: set = set()
        bank = [BY_NAME[r] for r in rules] if rules is not None else list(BY_NAME.values())
        for side_name in ("lhs", "rhs"):
            side = state.side(side_name)
            for node, _path in _nodes(side):
                if not node.args:
                    continue
                for rule in bank:
                    for reverse in (False, True):
                        src, dst = (rule.rhs, rule.lhs) if reverse else (rule.lhs, rule.rhs)
                        if not _head_ok(src, node):
                            continue
                        for m, bind in _matches(rule.name, reverse, node):
                            if m.picked is None:
                                target = node
                            elif isinstance(node, Mul):
                                nums = tuple(i for i, a in enumerate(node.args) if not _numeric_part((a,))[1])
                                target = _rebuild_node(node, [node.args[i] for i in nums + m.picked])
                            else:
                                target = _part(node, m.picked)
                            k = int(bind[_N]) if rule.periodic else None
                            a = Action(rule.name, reverse, side_name, expr_to_lean(target), k)
                            if a in seen:
                                continue
                            if m.picked is None and not _is_const_template(src):
                                # a whole node: found again by its text (canonical trees)
                                ok = expr_to_lean(_inst(dst, bind)) != a.target
                            else:  # a part of a sum/product: check that its text finds it
                                ok = self._applies(state, a)
                            if ok:
                                seen.add(a)
                                out.append(a)
            if self.helpers:
                for h in ("ring_nf", "expand"):
                    a = Action(h, False, side_name, expr_to_lean(side))
                    if a not in seen and self._applies(state, a):
                        seen.add(a)
                        out.append(a)
                for node, _ in _nodes(side):
                    names = ["abs_pos", "abs_neg"] if isinstance(node, sp.Abs) else []
                    if isinstance(node, Pow) and node.exp == Rational(1, 2) and isinstance(node.base, Pow) \
                            and node.base.exp == 2:
                        names.append("sqrt_sq")
                    for h in names:
                        a = Action(h, False, side_name, expr_to_lean(node))
                        if a not in seen:
                            seen.add(a)
                            out.append(a)
        return out


@functools.lru_cache(maxsize=65536)
def _matches(rule_name: str, reverse: bool, node) -> tuple:
    """Every (match, solved binding) of a rule at a node, with K solved (cached: search trees share subterms)."""
    rule = BY_NAME[rule_name]
    src, dst = (rule.rhs, rule.lhs) if reverse else (rule.lhs, rule.rhs)
    out = []
    for m in _top_matches(src, node):
        bind = _solve(m.eqs, None, dst)
        if bind is not None:
            out.append((m, bind))
    return tuple(out)


def _head_ok(t, s) -> bool:
    """Cheap pre-filter: can template ``t`` match at node ``s`` at all?"""
    if _is_trig(t):
        return _is_trig(s) and s.func == t.func
    if isinstance(t, Mul):
        return True
    return type(t) is type(s)


# ---------------------------------------------------------------- proofs and Lean export

@dataclass
class Proof:
    """A statement and the gym actions that close it."""

    statement: Statement
    actions: list

    def replay(self, gym: Optional[Gym] = None) -> tuple:
        """(closed?, states): apply every action from the statement; :class:`TrigoError` on a refused step."""
        gym = gym or Gym()
        st = TrigoState.make(self.statement.lhs, self.statement.rhs)
        states = [st]
        for a in self.actions:
            st = gym.step(st, a)
            states.append(st)
        return gym.is_closed(st), states


def _inner_tactics(a: Action, k: Optional[int], x_text: Optional[str]) -> str:
    helper = {"ring_nf": "field_simp, ring_nf", "expand": "ring_exp", "field_calc": "field_simp at *, ring_nf",
              "abs_pos": "rw abs_of_nonneg, assumption",
              "abs_neg": "rw abs_of_nonpos, ring, assumption", "sqrt_sq": "rw real.sqrt_sq_eq_abs"}
    if a.rule in helper:
        return helper[a.rule]
    arrow = "← " if a.reverse else ""
    args = f" ({x_text}) ({k})" if k is not None else ""
    return f"rw {arrow}{a.rule}{args}, try {{field_simp}}, try {{ring_nf}}"


def to_lean(proof: Proof, gym: Optional[Gym] = None) -> str:
    """A Lean 3 lemma with the proof as TRIGO-style tactics::

        have : OLD = NEW,
        { rw sin_two_mul, try {field_simp}, try {ring_nf} },
        conv {to_lhs, rw this},

    one block per action, then ``field_simp, ring_exp`` for the closing algebra. This script is NOT checked
    here (no Lean): the rewrite lemmas are TRIGO's (``trigo_import.lean``) and mathlib's, but whether Lean
    accepts the tactics at each step (associativity, ``congr_arg`` on angles) needs a Lean install."""
    gym = gym or Gym()
    st = TrigoState.make(proof.statement.lhs, proof.statement.rhs)
    lines = []
    for a in proof.actions:
        new_state, part, new, k = gym.rewrite(st, a)
        x_text = None
        if k is not None and a.rule in BY_NAME:
            rule = BY_NAME[a.rule]
            res = gym._apply_rule(rule, a.reverse, *_locate_node(st.side(a.side), a.target), k)
            bind = res[2]
            x_text = expr_to_lean(bind[_X])
        lines.append(f"  have : {expr_to_lean(part)} = {expr_to_lean(new)},")
        lines.append(f"  {{ {_inner_tactics(a, k, x_text)} }},")
        lines.append(f"  conv {{to_{a.side}, rw this}},")
        st = gym.step(st, a)
    lines.append("  field_simp,")
    lines.append("  ring_exp,")
    s = proof.statement
    hyps = "".join(f" (h{i} : {h})" for i, h in enumerate(s.hyps))
    head = f"lemma {s.name}{hyps} : {expr_to_lean(s.lhs)} = {expr_to_lean(s.rhs)} :="
    return "\n".join([head, "begin", *lines, "end"]) + "\n"


def _locate_node(side, target_text: str) -> tuple:
    path, picked = _locate(side, canon(parse_expr(target_text)))
    return _get(side, path), picked


_HAVE = re.compile(r"^\s*have\s*:\s*(?P<old>.+?)\s*=\s*(?P<new>.+?),\s*$")
_TAC = re.compile(r"^\s*\{\s*(?P<tac>.*)\}\s*,\s*$")
_CONV = re.compile(r"^\s*conv\s*\{\s*to_(?P<side>lhs|rhs)\s*,\s*rw\s+this\s*\}\s*,\s*$")
_HELPER_OF = {"field_simp, ring_nf": "ring_nf", "ring_exp": "expand", "field_simp at *, ring_nf": "field_calc",
              "rw abs_of_nonneg": "abs_pos",
              "rw abs_of_nonpos": "abs_neg", "rw real.sqrt_sq_eq_abs": "sqrt_sq"}


def from_lean(script: str) -> Proof:
    """Parse a lemma written by :func:`to_lean` back into (statement, gym actions). Raises
    :class:`TrigoError` naming the line for a block that is not ``have / {tactics} / conv``."""
    lines = script.splitlines()
    head = next((i for i, ln in enumerate(lines) if re.match(r"^\s*(lemma|theorem)\b", ln)), None)
    if head is None:
        raise TrigoError("no 'lemma NAME : lhs = rhs :=' line in the script")
    stmt = parse_statement(lines[head], where=f"<script>:{head + 1}")
    actions: list[Action] = []
    i = head + 1
    while i < len(lines):
        m = _HAVE.match(lines[i])
        if not m:
            i += 1
            continue
        if i + 2 >= len(lines):
            raise TrigoError(f"<script>:{i + 1}: a 'have' without its tactic block and conv line")
        t, c = _TAC.match(lines[i + 1]), _CONV.match(lines[i + 2])
        if not t or not c:
            raise TrigoError(f"<script>:{i + 2}: expected '{{ tactics }},' then 'conv {{to_lhs, rw this}},'")
        tac = t.group("tac").strip()
        helper = next((h for pre, h in _HELPER_OF.items() if tac.startswith(pre)), None)
        if helper == "field_calc":
            actions.append(Action(helper, False, c.group("side"), f"{m.group('old')} ==> {m.group('new')}"))
        elif helper:
            actions.append(Action(helper, False, c.group("side"), m.group("old")))
        else:
            r = re.match(r"rw\s+(?P<rev>←\s*)?(?P<rule>[^\s,]+)"
                         r"(?:\s+\((?P<x>[^()]*(?:\([^()]*\)[^()]*)*)\)\s+\((?P<k>-?\d+)\))?", tac)
            if not r or r.group("rule") not in BY_NAME:
                raise TrigoError(f"<script>:{i + 2}: no known rule in {tac!r}")
            k = int(r.group("k")) if r.group("k") else None
            actions.append(Action(r.group("rule"), bool(r.group("rev")), c.group("side"), m.group("old"), k))
        i += 3
    return Proof(stmt, actions)


@dataclass
class CheckResult:
    """One statement's verdict: ``status`` is ``"equal"`` (numerically equal in plain real arithmetic),
    ``"total"`` (equal only under Lean's total division, x/0 = 0), ``"vacuous"`` (true in Lean only because a
    hypothesis such as ``cos(pi/2) ≠ 0`` is false), ``"false"`` or ``"error"``; ``gold`` is None (no gold
    proof), True or False (replays to a closed goal or not)."""

    name: str
    status: str
    gold: Optional[bool] = None
    detail: str = ""


def check_statement(st: Statement, gym: Optional[Gym] = None, points: int = 3) -> CheckResult:
    """The numeric check of a statement (plain, then under Lean's total division with its hypotheses), and
    the replay of its gold proof when it has one."""
    from .trigo_expr import parse_hyp

    try:
        ints = tuple(st.ints)
        if numerically_equal(st.lhs, st.rhs, total=False, points=points, ints=ints):
            status = "equal"
        elif numerically_equal(st.lhs, st.rhs, total=True, points=points, ints=ints):
            status = "total"
        else:
            hyps = tuple(parse_hyp(h) for h in st.hyps)
            status = "vacuous" if hyps and numerically_equal(st.lhs, st.rhs, total=True, points=points, hyps=hyps,
                                                             ints=ints) else "false"
    except TrigoError as exc:
        return CheckResult(st.name, "error", None, str(exc))
    gold = None
    detail = ""
    if st.gold:
        try:
            gold, _ = Proof(st, [Action.from_text(a) for a in st.gold]).replay(gym or Gym(helpers=False))
        except TrigoError as exc:
            gold, detail = False, str(exc)
    return CheckResult(st.name, status, gold, detail)


_TOP_HAVE = re.compile(r"^have\s*:\s*(?P<body>.*),$")
_RULE_RW = re.compile(r"^rw\s+(?:←\s*)?(?P<rule>[A-Za-z_'.]+)(?:\s+\((?P<x>.*)\)\s+\((?P<k>-?\d+)\))?")
_USE = re.compile(r"^(?:conv\s*\{\s*to_(?P<side>lhs|rhs)\s*,\s*)?rw\s+(?P<back>←\s*)?this\b")


def _have_blocks(lines: list) -> Iterator[tuple]:
    """Top-level ``have : A = B, {block}, USE`` triples of a TRIGO proof (a have whose next line is another
    have only feeds that one and is skipped)."""
    i = 0
    while i < len(lines):
        m = _TOP_HAVE.match(lines[i])
        if not m or i + 1 >= len(lines) or not lines[i + 1].startswith("{"):
            i += 1
            continue
        j, depth, block = i + 1, 0, []
        while j < len(lines):
            depth += lines[j].count("{") - lines[j].count("}")
            block.append(lines[j])
            j += 1
            if depth == 0:
                break
        use = lines[j] if j < len(lines) else ""
        if use.startswith("have"):
            i = j
            continue
        yield m.group("body"), block, use
        i = j + 1


def actions_from_trigo_proof(st: Statement, gym: Optional[Gym] = None) -> list[Action]:
    """Gym actions replaying one of TRIGO's generated Lean proofs (TG-k files: top-level ``have : A = B,
    {tactics}, conv {to_lhs, rw ← this}`` blocks). Each block becomes the action that rewrites A into B (or B
    into A under ``←``): the rule its tactics name, tried as written and in both directions, with its K; else
    any bank rule; else ``field_calc`` for a block of algebra. Reconstruction: a step is accepted when the
    side it gives equals, algebraically, the side with the have's text put in place. Raises
    :class:`TrigoError` naming the first block no action reproduces (e.g. one that holds only through a false
    ``D ≠ 0`` hypothesis: the guard refuses it)."""
    gym = gym or Gym(helpers=False)
    state = TrigoState.make(st.lhs, st.rhs)
    out: list[Action] = []
    for body, block, use in _have_blocks(st.proof):
        u = _USE.match(use)
        if body.count("=") != 1 or not u:
            raise TrigoError(f"{st.name}: block 'have : {body[:60]}' is not 'have : A = B' followed by 'rw this'")
        a_txt, b_txt = body.split("=")
        old, new = (b_txt, a_txt) if u.group("back") else (a_txt, b_txt)
        old, new = expr_to_lean(canon(parse_expr(old))), expr_to_lean(canon(parse_expr(new)))
        if old == new:
            continue
        sides = [u.group("side")] if u.group("side") else ["lhs", "rhs"]
        rule, k, written = None, None, None
        for ln in block:
            ln = ln.lstrip("{ ")
            r = _RULE_RW.match(ln)
            if r and r.group("rule") in BY_NAME:
                rule, k = r.group("rule"), int(r.group("k")) if r.group("k") else None
                break
            h = _TOP_HAVE.match(ln)
            if h and h.group("body").count("=") == 1 and written is None:  # `have : A = A', {congr_arg}, rw this`
                w_old, w_new = (expr_to_lean(canon(parse_expr(t))) for t in h.group("body").split("="))
                written = w_new if w_old == old else None
        cands = []
        if rule is not None:
            for sd in sides:
                for tgt in ([written] if written else []) + [old]:
                    cands += [Action(rule, rev, sd, tgt, k) for rev in (False, True)]
            cands += [Action(r, rev, sd, old) for r in BY_NAME if r != rule for sd in sides for rev in (False, True)]
        cands += [Action("field_calc", False, sd, f"{old} ==> {new}") for sd in sides]
        for a in cands:
            try:
                nxt = gym.step(state, a)
                want = gym.substitute(state, a.side, old, new).side(a.side)
            except TrigoError:
                continue
            if is_zero_symbolic(add(nxt.side(a.side), neg(want))):
                state = nxt
                out.append(a)
                break
        else:
            raise TrigoError(f"{st.name}: no gym action rewrites {old} into {new}" + (f" ({rule})" if rule else ""))
    if not gym.is_closed(state):
        raise TrigoError(f"{st.name}: the replayed proof leaves {state.to_text()} open")
    return out
