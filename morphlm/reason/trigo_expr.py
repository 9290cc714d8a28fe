"""Lean 3 trigonometric expressions ↔ SymPy trees, for the TRIGO gym (Xiong et al., EMNLP 2023, arXiv 2310.10180).

The trees are built with ``evaluate=False`` and flattened (``a+b+c`` is one ``Add``, ``a*b*c`` one ``Mul``;
``a-b`` is ``Add(a, Mul(-1, b))``, ``a/b`` is ``Mul(a, Pow(b, -1))``), so the subterm a user wrote is the subterm a
rule sees. ``sin``, ``cos`` and ``tan`` are *undefined* SymPy functions (:data:`SIN`, :data:`COS`, :data:`TAN`):
SymPy can never evaluate them (``sin(pi/6)`` stays a call, never becomes ``1/2``), so special values enter a
proof only through the gym's value rules. ``sqrt`` and ``abs`` are SymPy's own (algebraic, not trigonometric).

Lean 3 syntax read here: numerals (``3``, ``0.5``), ``pi``/``π``/``real.pi``, variables, ``+ - * /``, ``**`` and
``^`` (right-associative, binding tighter than unary minus, as in Lean 3: ``-x^2 = -(x^2)``), ``⁻¹``, function
application by juxtaposition (``sin x``, ``sqrt 3``, ``sin (pi / 12)``) or with parentheses (``sin(pi/12)``),
``|a|`` and ``abs a``, and the coercion arrow ``↑`` (ignored).

:func:`value` is the numeric evaluator the guard uses: mpmath at 40 digits, with Lean's total semantics by
default (``a/0 = 0``, ``tan a = sin a / cos a`` so ``tan`` at a pole is 0, ``sqrt`` of a negative is 0)."""

from __future__ import annotations

import re
from typing import Optional

import mpmath
import sympy as sp
from sympy import Add, Integer, Mul, Pow, Rational

SIN = sp.Function("sin")
COS = sp.Function("cos")
TAN = sp.Function("tan")
TRIG = {"sin": SIN, "cos": COS, "tan": TAN}
TRIG_FUNCS = (SIN, COS, TAN)
X_SYM = sp.Symbol("x", real=True)
Y_SYM = sp.Symbol("y", real=True)


class TrigoError(ValueError):
    """Base of every TRIGO gym error (a ValueError, so the CLI reports it as one clear line)."""


class TrigoParseError(TrigoError):
    """An expression that cannot be read as a Lean 3 real-number trigonometric expression."""


_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_.']*)"
                    r"|(?P<op>\*\*|⁻¹|[-+*/^()|↑π]))")
_FUNCS = {"sin", "cos", "tan", "sqrt", "abs", "Abs", "real.sin", "real.cos", "real.tan", "real.sqrt"}


def _is_trig(e) -> bool:
    return isinstance(e, sp.Function) and e.func in TRIG_FUNCS


def mul(*args):
    """A flattened unevaluated product (a nested Mul's factors are spliced in; a lone factor is returned), its
    numerals multiplied into one leading factor (``a*(-1)*b*2`` is ``-2*a*b``: one spelling per product)."""
    flat = []
    for a in args:
        flat.extend(a.args if isinstance(a, Mul) else [a])
    nums = [a for a in flat if isinstance(a, sp.Number)]
    if len(nums) > 1 or (nums and flat[0] is not nums[0]):
        c = Integer(1)
        for a in nums:
            c *= a
        flat = [c] + [a for a in flat if not isinstance(a, sp.Number)]
    return flat[0] if len(flat) == 1 else Mul(*flat, evaluate=False)


def add(*args):
    """A flattened unevaluated sum."""
    flat = []
    for a in args:
        flat.extend(a.args if isinstance(a, Add) else [a])
    return flat[0] if len(flat) == 1 else Add(*flat, evaluate=False)


def neg(a):
    if isinstance(a, (Integer, Rational)) and a != 0:
        return -a
    return mul(Integer(-1), a)


def div(a, b):
    return mul(a, Pow(b, -1, evaluate=False))


def power(a, b):
    return Pow(a, b, evaluate=False)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks: list[tuple[str, str]] = []
        pos = 0
        stripped = text.rstrip()
        while pos < len(stripped):
            m = _TOKEN.match(stripped, pos)
            if not m or m.end() == pos:
                raise TrigoParseError(f"cannot read {text!r} at character {pos + 1} ({stripped[pos:pos + 10]!r}): "
                                      "expected a number, a name, an operator (+ - * / ** ^ ⁻¹) or a parenthesis")
            kind = m.lastgroup
            self.toks.append((kind, m.group(kind)))
            pos = m.end()
        self.i = 0

    def peek(self, k: int = 0) -> Optional[tuple[str, str]]:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def take(self, value: Optional[str] = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            want = f"{value!r}" if value else "more input"
            raise TrigoParseError(f"cannot read {self.text!r}: expected {want}, found "
                                  f"{tok[1] if tok else 'the end'!r}")
        self.i += 1
        return tok

    def parse(self):
        if not self.toks:
            raise TrigoParseError("cannot read an empty expression")
        e = self.expr()
        if self.peek() is not None:
            raise TrigoParseError(f"cannot read {self.text!r}: unexpected {self.peek()[1]!r} after a complete "
                                  "expression")
        return e

    def expr(self):
        terms = []
        sign = 1
        if self.peek() and self.peek()[1] in "+-" and self.peek()[0] == "op":
            sign = -1 if self.take()[1] == "-" else 1
        terms.append(self.term() if sign > 0 else neg(self.term()))
        while self.peek() and self.peek()[0] == "op" and self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            if self.peek() and self.peek()[1] == "-":  # `a + -b`
                self.take()
                t = neg(self.term())
                terms.append(t if op == "+" else neg(t))
            else:
                t = self.term()
                terms.append(t if op == "+" else neg(t))
        return add(*terms)

    def term(self):
        e = self.unary()
        while self.peek() and self.peek()[0] == "op" and self.peek()[1] in ("*", "/"):
            op = self.take()[1]
            r = self.unary()
            e = mul(e, r) if op == "*" else div(e, r)
        return e

    def unary(self):
        if self.peek() and self.peek()[1] == "-":
            self.take()
            return neg(self.unary())
        return self.pow()

    def pow(self):
        base = self.postfix()
        if self.peek() and self.peek()[1] in ("**", "^"):
            self.take()
            return power(base, self.unary())
        return base

    def postfix(self):
        e = self.app()
        while self.peek() and self.peek()[1] == "⁻¹":
            self.take()
            e = power(e, Integer(-1))
        return e

    def app(self):
        tok = self.peek()
        if tok and tok[0] == "name" and tok[1] in _FUNCS:
            self.take()
            name = tok[1].split(".")[-1]
            arg = self.postfix_atom()
            if name == "Abs":
                name = "abs"
            if name in TRIG:
                return TRIG[name](arg)
            if name == "sqrt":
                return power(arg, Rational(1, 2))
            return sp.Abs(arg, evaluate=False)
        return self.atom()

    def postfix_atom(self):
        if self.peek() is None:
            raise TrigoParseError(f"cannot read {self.text!r}: a function name at the end has no argument")
        return self.atom()

    def atom(self):
        kind, val = self.take()
        if kind == "num":
            return Integer(int(val)) if "." not in val else Rational(val)
        if kind == "name":
            if val in ("pi", "real.pi"):
                return sp.pi
            if val in _FUNCS:  # e.g. `sin sin x`: an argument that is itself an application
                self.i -= 1
                return self.app()
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_']*", val):
                raise TrigoParseError(f"cannot read {self.text!r}: {val!r} is not a variable name")
            return sp.Symbol(val, real=True)
        if val == "π":
            return sp.pi
        if val == "↑":  # a coercion: `↑-2` is the integer -2 as a real
            if self.peek() and self.peek()[1] == "-":
                self.take()
                return neg(self.atom())
            return self.atom()
        if val == "(":
            e = self.expr()
            self.take(")")
            return e
        if val == "|":
            e = self.expr()
            self.take("|")
            return sp.Abs(e, evaluate=False)
        raise TrigoParseError(f"cannot read {self.text!r}: unexpected {val!r}")


def parse_expr(text: str):
    """A Lean 3 expression → an unevaluated, flattened SymPy tree; :class:`TrigoParseError` when unreadable."""
    return _Parser(text).parse()


# ---------------------------------------------------------------- printing back to Lean 3

def _split_frac(e):
    """Mul → (numerator factors, denominator factors), with a leading -1 kept in the numerator."""
    num, den = [], []
    for a in (e.args if isinstance(e, Mul) else [e]):
        if isinstance(a, Pow) and a.exp.is_Number and a.exp < 0:
            den.append(a.base if a.exp == -1 else Pow(a.base, -a.exp, evaluate=False))
        elif isinstance(a, Rational) and not isinstance(a, Integer):
            num.append(Integer(a.p))
            den.append(Integer(a.q))
        else:
            num.append(a)
    return num, den


def _prec(e) -> int:
    if isinstance(e, Add):
        return 65
    if isinstance(e, Mul) or (isinstance(e, Rational) and not isinstance(e, Integer)):
        return 70
    if isinstance(e, (Integer,)) and e < 0:
        return 65
    if isinstance(e, Pow) and not (e.exp == Rational(1, 2)) and not (e.exp.is_Number and e.exp < 0):
        return 75
    return 100


def _wrap(e, min_prec: int) -> str:
    s = to_lean(e)
    return f"({s})" if _prec(e) < min_prec else s


def _is_neg(e) -> bool:
    if isinstance(e, sp.Number):
        return e < 0
    return isinstance(e, Mul) and isinstance(e.args[0], sp.Number) and e.args[0] < 0


def to_lean(e) -> str:
    """A SymPy tree → Lean 3 text in TRIGO's statement style (``sin(pi/12)**2``, ``sqrt(3)``)."""
    if isinstance(e, sp.Integer):
        return str(int(e))
    if e is sp.pi:
        return "pi"
    if isinstance(e, sp.Symbol):
        return e.name
    if isinstance(e, Rational):
        return f"{e.p}/{e.q}"
    if _is_trig(e):
        return f"{e.func.__name__}({to_lean(e.args[0])})"
    if isinstance(e, sp.Abs):
        return f"abs({to_lean(e.args[0])})"
    if isinstance(e, Pow):
        if e.exp == Rational(1, 2):
            return f"sqrt({to_lean(e.base)})"
        if e.exp.is_Number and e.exp < 0:
            return to_lean(mul(Integer(1), e))
        return f"{_wrap(e.base, 76)}**{_wrap(e.exp, 76)}"
    if isinstance(e, Add):
        out = to_lean(e.args[0]) if _prec(e.args[0]) >= 65 else f"({to_lean(e.args[0])})"
        for a in e.args[1:]:
            if _is_neg(a):
                out += f" - {_wrap(_negate(a), 66)}"
            else:
                out += f" + {_wrap(a, 66)}"
        return out
    if isinstance(e, Mul):
        if isinstance(e.args[0], sp.Number) and e.args[0] < 0:
            rest = _negate(e)
            return f"-{_wrap(rest, 70)}"
        num, den = _split_frac(e)
        if num and num[0] == 1 and len(num) > 1:
            num = num[1:]
        ns = "*".join(_wrap(a, 71) for a in num) if num else "1"
        if len(num) == 1:
            ns = _wrap(num[0], 70)
        if not den:
            return ns
        ds = "*".join(_wrap(a, 71) for a in den)
        if len(den) > 1:
            ds = f"({ds})"
        else:
            ds = _wrap(den[0], 71)
        return f"{ns}/{ds}"
    raise TrigoParseError(f"cannot print {e!r} as Lean 3: unsupported node {type(e).__name__}")


def _negate(e):
    """-e for a negative number or a Mul with a negative leading number (no other simplification)."""
    if isinstance(e, sp.Number):
        return -e
    c = -e.args[0]
    rest = list(e.args[1:])
    if c == 1:
        return rest[0] if len(rest) == 1 else Mul(*rest, evaluate=False)
    return Mul(c, *rest, evaluate=False)


# ---------------------------------------------------------------- evaluation

def rebuild(e, total: bool = True):
    """The evaluated SymPy form of an unevaluated tree (trig calls stay opaque: their argument is evaluated,
    never the call). ``total``: Lean's division, ``a/0 = 0`` (an exactly-zero base under a negative power → 0)."""
    if not e.args:
        return e
    args = [rebuild(a, total) for a in e.args]
    if isinstance(e, Pow):
        b, x = args
        if total and b.is_zero and x.is_negative:
            return Integer(0)
        if total and x == Rational(1, 2) and b.is_negative:
            return Integer(0)  # Lean's real.sqrt of a negative is 0
        return Pow(b, x)
    if _is_trig(e):
        return e.func(sp.expand(args[0]))
    return e.func(*args)


def atomize(e):
    """Replace every trig call in an evaluated expression by an opaque symbol (one per function and argument)."""
    calls = sorted(e.atoms(*TRIG_FUNCS), key=sp.default_sort_key)
    return e.xreplace({c: sp.Symbol(f"_{c.func.__name__}_{i}") for i, c in enumerate(calls)})


class _Unsure(ArithmeticError):
    pass


def _atom_value(sym) -> "mpmath.mpf":
    """A fixed pseudo-random value in [0.3, 1.7] for an opaque atom or variable (by its name: reproducible)."""
    import zlib

    return mpmath.mpf(3) / 10 + mpmath.mpf(zlib.crc32(sym.name.encode()) % 1_000_003) / 1_000_003 * mpmath.mpf(1.4)


def _probe(e, top: list) -> "mpmath.mpf":
    """Value of an evaluated, atomized expression at :func:`_atom_value`; ``top[0]`` collects the largest
    magnitude met (the rounding scale). :class:`_Unsure` wherever the value is not plainly defined."""
    if isinstance(e, sp.Symbol):
        v = _atom_value(e)
    elif isinstance(e, Rational):  # Integer included
        v = mpmath.mpf(e.p) / e.q
    elif e is sp.pi:
        v = +mpmath.pi
    elif isinstance(e, Add):
        terms = [_probe(a, top) for a in e.args]
        v = mpmath.fsum(terms)
    elif isinstance(e, Mul):
        v = mpmath.mpf(1)
        for a in e.args:
            v *= _probe(a, top)
    elif isinstance(e, Pow):
        b, x = _probe(e.base, top), _probe(e.exp, top)
        if abs(b) < mpmath.mpf(10) ** -20 or (b < 0 and x != int(x)):
            raise _Unsure("a pole or a root of a negative")
        v = b ** x
    elif isinstance(e, sp.Abs):
        v = abs(_probe(e.args[0], top))
    elif isinstance(e, sp.Number) and e.is_real:
        v = mpmath.mpf(str(sp.N(e, 60)))
    else:
        raise _Unsure(f"no numeric probe for {type(e).__name__}")
    top[0] = max(top[0], abs(v))
    return v


def plainly_nonzero(d) -> bool:
    """True when an evaluated expression whose trig calls are opaque symbols (:func:`atomize`) is certainly not 0
    as a rational function of those symbols: its value at one fixed point (every symbol in [0.3, 1.7], 60 digits)
    is far from 0 relative to the largest intermediate value. A zero rational function is 0 at every point where
    it is defined, so a True answer is never wrong; False means "not decided" (a pole, a root of a negative, an
    unknown node, or a value near 0) and the exact check decides. A cheap first test for :func:`is_zero_symbolic`
    (most candidate states of a search are not closed)."""
    top = [mpmath.mpf(1)]
    try:
        with mpmath.workdps(60):
            v = _probe(d, top)
            return bool(mpmath.isfinite(v)) and abs(v) > mpmath.mpf(10) ** -30 * top[0]
    except (_Unsure, ArithmeticError, TypeError, ValueError):
        return False


def is_zero_symbolic(e, total: bool = True) -> bool:
    """Whether an unevaluated difference is 0 without evaluating any trig function: trig calls → opaque atoms,
    then rational cancellation with radicals rationalised (the stand-in for Lean's ``ring``/``field_simp``).
    A difference that :func:`plainly_nonzero` rules out skips the cancellation."""
    d = atomize(rebuild(e, total))
    if d == 0:
        return True
    if plainly_nonzero(d):
        return False
    try:
        c = sp.cancel(sp.radsimp(sp.cancel(d)))
        if c == 0:
            return True
        return sp.expand(sp.radsimp(c)) == 0
    except (sp.PolynomialError, TypeError, ValueError, ZeroDivisionError):
        return False


class _DivZero(ArithmeticError):
    pass


_EPS = mpmath.mpf(10) ** -28


def value(e, env: dict, total: bool = True):
    """Numeric value of a tree at a point (``env`` maps symbols to mpf), mpmath at the ambient precision.
    Lean's total semantics when ``total``: division by (numerically) zero → 0, ``tan`` at a pole → 0,
    ``sqrt`` of a negative → 0; otherwise those raise ``ArithmeticError``."""
    if isinstance(e, sp.Symbol):
        if e not in env:
            raise TrigoError(f"no value for the variable {e.name!r}")
        return env[e]
    if e is sp.pi:
        return mpmath.pi
    if isinstance(e, sp.Integer):
        return mpmath.mpf(int(e))
    if isinstance(e, Rational):
        return mpmath.mpf(e.p) / e.q
    if isinstance(e, sp.Number):
        return mpmath.mpf(str(sp.N(e, 50)))
    if isinstance(e, Add):
        return mpmath.fsum(value(a, env, total) for a in e.args)
    if isinstance(e, Mul):
        out = mpmath.mpf(1)
        for a in e.args:
            out *= value(a, env, total)
        return out
    if isinstance(e, Pow):
        b = value(e.base, env, total)
        x = value(e.exp, env, total)
        if x < 0 and abs(b) < _EPS:
            if total:
                return mpmath.mpf(0)
            raise _DivZero("division by zero")
        if x == mpmath.mpf(1) / 2:
            if b < 0:
                if total:
                    return mpmath.mpf(0)
                raise _DivZero("sqrt of a negative")
            return mpmath.sqrt(b)
        if b < 0 and x != int(x):
            raise _DivZero("non-integer power of a negative")
        return b ** x
    if isinstance(e, sp.Abs):
        return abs(value(e.args[0], env, total))
    if _is_trig(e):
        a = value(e.args[0], env, total)
        name = e.func.__name__
        if name == "sin":
            return mpmath.sin(a)
        if name == "cos":
            return mpmath.cos(a)
        c = mpmath.cos(a)
        if abs(c) < _EPS:
            if total:
                return mpmath.mpf(0)
            raise _DivZero("tan at a pole")
        return mpmath.sin(a) / c
    raise TrigoError(f"cannot evaluate {e!r}: unsupported node {type(e).__name__}")


def _hyp_holds(h: tuple, env: dict, total: bool) -> bool:
    op, a, b = h
    va, vb = value(a, env, total), value(b, env, total)
    tol = mpmath.mpf(10) ** -25 * max(1, abs(va), abs(vb))
    return {"≠": abs(va - vb) > tol, "=": abs(va - vb) <= tol, "≤": va <= vb + tol, "≥": va >= vb - tol,
            "<": va < vb - tol, ">": va > vb + tol}[op]


def parse_hyp(text: str) -> tuple:
    """A hypothesis ``A ≠ B`` / ``A ≤ B`` / ``A ≥ B`` / ``A < B`` / ``A > B`` / ``A = B`` → (op, A, B)."""
    t = text.replace("<=", "≤").replace(">=", "≥").replace("!=", "≠")
    m = re.search(r"[≠≤≥<>=]", t)
    if not m:
        raise TrigoParseError(f"hypothesis {text!r} is not a relation (≠ ≤ ≥ < > =)")
    return m.group(0), parse_expr(t[:m.start()]), parse_expr(t[m.end():])


def free_vars(*exprs) -> list:
    out = set()
    for e in exprs:
        out |= {s for s in e.free_symbols}
    return sorted(out, key=lambda s: s.name)


def numerically_equal(a, b, total: bool = True, points: int = 3, seed: int = 0, dps: int = 40,
                      hyps: tuple = (), box: tuple = (0.05, 0.75), ints: tuple = ()) -> bool:
    """Whether ``a`` and ``b`` agree at ``points`` random real points (variables uniform in ``box``, by default
    inside (0, π/4): the web exercises tacitly assume an acute angle, e.g. ``sqrt(1 - sin(x)**2)/cos(x) = 1``)
    to about 25 significant digits, under Lean's total division when ``total``; a point that raises counts as
    disagreement.
    ``hyps`` (parsed with :func:`parse_hyp`): a point where one is false proves nothing and is passed over, as
    Lean accepts a statement whose hypotheses cannot hold (TRIGO's generator adds ``D ≠ 0`` for every
    denominator, true or not, so a few TG-k statements hold only vacuously). Variables named in ``ints`` take
    integer values in [-5, 5] (an induction formula's ``n``)."""
    import random

    rng = random.Random(seed)
    syms = free_vars(a, b, *[x for h in hyps for x in h[1:]])
    n = points if syms else 1
    with mpmath.workdps(dps):
        for _ in range(n):
            env = {s: mpmath.mpf(rng.randint(-5, 5) if s.name in ints else rng.uniform(*box)) for s in syms}
            try:
                if total and hyps and not all(_hyp_holds(h, env, total) for h in hyps):
                    continue
                va, vb = value(a, env, total), value(b, env, total)
            except ArithmeticError:
                return False
            if not (mpmath.isfinite(va) and mpmath.isfinite(vb)):
                return False
            if abs(va - vb) > mpmath.mpf(10) ** -25 * max(1, abs(va), abs(vb)):
                return False
    return True
