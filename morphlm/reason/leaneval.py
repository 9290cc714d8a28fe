"""Evaluation of Lean 3 term trees (:mod:`morphlm.reason.leanexpr`) into SymPy with Lean's semantics
(reconstruction).

:class:`Evaluator` keeps Lean's semantics where they differ from a field's: ℕ subtraction truncates at 0, ℕ division
floors, ``x / 0 = 0``, ``0⁻¹ = 0``, ``real.sqrt x = 0`` for x < 0, ``real.log x = log |x|`` with ``log 0 = 0``,
``tan = sin / cos``, ℤ ``%`` is non-negative. An operation whose Lean meaning cannot be kept on symbolic operands
(ℕ subtraction or division of unknowns, ℤ division of negatives, ...) raises :class:`Unsafe`: the caller then drops
that hypothesis from solving (sound: fewer constraints never make a unique answer wrong) and checks it only on
concrete candidates. Types are inferred bottom-up (variables, ascriptions, function codomains) and pushed down (Lean 3
elaborates with the expected type: numerals and ``↑`` take the type of the context; ℕ when nothing fixes one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sympy as sp

from .leanexpr import INFIX, INTEGRAL, RANK, Unsafe, lean_type

MAX_TERMS = 20000  # largest finite sum/product/filter evaluated
MAX_EXP = 4000  # largest exponent expanded exactly (larger: only under a modulus)

@dataclass
class Func:
    """A function given by a definition hypothesis ``∀ x, f x = body`` (optionally guarded: ``∀ x ≠ -2, ...``)."""

    params: list[str]
    body: Any
    arg_types: list[str]
    cod: str
    guard: Any = None


@dataclass
class Env:
    types: dict[str, str] = field(default_factory=dict)  # variable -> number type
    values: dict[str, Any] = field(default_factory=dict)  # variable -> sympy value or Symbol
    funcs: dict[str, Func] = field(default_factory=dict)
    fun_types: dict[str, tuple[list[str], str]] = field(default_factory=dict)  # undefined functions' signatures
    symbolic_apps: bool = True  # f(2) of an undefined f becomes an unknown symbol


def join(*types):
    known = [t for t in types if t]
    if not known:
        return None
    return max(known, key=lambda t: RANK.get(t, 5))


def is_num(x) -> bool:
    return isinstance(x, sp.Basic) and x.is_number and not x.has(sp.zoo, sp.nan, sp.oo, -sp.oo)


class Evaluator:
    """Evaluate an AST to a SymPy expression (numbers) or a Python bool (propositions) under ``env``.

    ``denominators`` collects the symbolic denominators met (a solver must look at the branch where one is 0, since
    Lean's ``x / 0 = 0`` can satisfy an equation a field cannot); ``symbols_made`` the unknowns created for
    applications of undefined functions."""

    def __init__(self, env: Env):
        self.env = env
        self.denominators: list[sp.Expr] = []
        self.app_symbols: dict[str, sp.Symbol] = {}
        self.sqrt_symbols: dict[sp.Symbol, sp.Expr] = {}  # t -> v for every real.sqrt v of an unknown v
        self.depth = 0

    # -- types
    def infer(self, node, local: dict | None = None) -> str | None:
        local = local or {}
        k = node[0]
        if k == "num":
            return None
        if k == "var":
            n = node[1]
            if n in local:
                return local[n]
            if n == "real.pi":
                return "real"
            if n == "complex.I":
                return "complex"
            return self.env.types.get(n)
        if k == "asc":
            return lean_type(node[2]) or None
        if k == "coe":
            return None
        if k in ("neg", "inv"):
            return self.infer(node[1], local)
        if k == "bin":
            op = node[1]
            if op == "^":
                return self.infer(node[2], local)
            if op == "/.":
                return "rat"
            if op in INFIX and INFIX[op][0] >= 65:
                return join(self.infer(node[2], local), self.infer(node[3], local))
            return None
        if k == "big":
            return self.infer(node[4], {**local, node[2]: self._index_type(node[3], local)})
        if k == "app":
            f = node[1]
            name = f[1] if f[0] == "var" else None
            if name in REAL_FUNCS:
                return "real"
            if name in NAT_FUNCS:
                return "nat"
            if name in ("int.floor", "int.ceil", "floor", "ceil", "int.nat_abs"):
                return "int" if name != "int.nat_abs" else "nat"
            if name in ("abs",):
                return self.infer(node[2][0], local)
            if name in self.env.funcs:
                return self.env.funcs[name].cod
            if name in self.env.fun_types:
                return self.env.fun_types[name][1]
            return None
        if k == "field":
            return {"num": "int", "denom": "nat", "card": "nat", "sum": None}.get(node[2])
        return None

    def _index_type(self, s, local) -> str:
        if s[0] == "app" and s[1][0] == "var" and s[1][1] in ("finset.Icc", "finset.Ico", "finset.Ioc",
                                                                 "finset.Ioo"):
            return join(*(self.infer(a, local) for a in s[2])) or "nat"
        return "nat"

    # -- values
    def value(self, node, want: str | None = None, local: dict | None = None):
        self.depth += 1
        if self.depth > 200:
            raise Unsafe("expression nested too deeply")
        try:
            return self._value(node, want, local or {})
        finally:
            self.depth -= 1

    def _t(self, node, want, local):
        # Lean 3 elaborates with the expected type when there is one (coercing the leaves); only without one does
        # the term's own type decide (ℕ for bare numerals)
        return want or self.infer(node, local) or "nat"

    def _value(self, node, want, local):
        k = node[0]
        if k == "num":
            v = sp.Rational(node[1]) if "." in node[1] else sp.Integer(node[1])
            if "." in node[1] and (want or "nat") in INTEGRAL:
                raise Unsafe("a decimal numeral in an integer context")
            return v
        if k == "var":
            n = node[1]
            if n in local:
                return local[n][0]
            if n == "real.pi":
                return sp.pi
            if n == "complex.I":
                return sp.I
            if n in self.env.values:
                return self.env.values[n]
            raise Unsafe(f"unknown name {n}")
        if k == "asc":
            t = lean_type(node[2])
            if t is None:
                raise Unsafe(f"ascription to {node[2]}")
            return self.value(node[1], t, local)
        if k == "coe":
            inner_t = self.infer(node[1], local) or "nat"  # an unconstrained ↑(numerals) elaborates in ℕ
            v = self.value(node[1], inner_t, local)
            return v
        if k == "neg":
            t = self._t(node, want, local)
            if t in ("nat", "pnat", "nnreal"):
                raise Unsafe("negation in ℕ")
            return -self.value(node[1], t, local)
        if k == "inv":
            t = self._t(node, want, local)
            v = self.value(node[1], t, local)
            if t in INTEGRAL:
                raise Unsafe("⁻¹ in an integer type")
            return self._div(sp.Integer(1), v, t)
        if k == "bin":
            return self._bin(node, want, local)
        if k == "app":
            return self._app(node, want, local)
        if k == "big":
            return self._big(node, want, local)
        if k == "field":
            return self._field(node, want, local)
        if k == "not":
            return not self.truth(node[1], local)
        if k == "list" or k == "tuple":
            return tuple(self.value(x, want, local) for x in node[1])
        raise Unsafe(f"no value for {k}")

    def _sqrt_symbol(self, v):
        """``real.sqrt v`` of an unknown ``v`` as a fresh symbol t >= 0: the solver adds ``t^2 = v`` (the branch
        v >= 0, where Lean's sqrt is SymPy's) or ``t = 0`` (the branch v < 0, where Lean's sqrt is 0)."""
        for t, w in self.sqrt_symbols.items():
            if w == v:
                return t
        t = sp.Symbol(f"sqrt{len(self.sqrt_symbols)}", nonnegative=True)
        self.sqrt_symbols[t] = v
        return t

    def _div(self, a, b, t):
        if is_num(b) and b == 0:
            return sp.Integer(0)
        if t in ("nat", "pnat"):
            if not (is_num(a) and is_num(b)):
                raise Unsafe("ℕ division of unknowns")
            return sp.floor(a / b)
        if t == "int":
            if not (is_num(a) and is_num(b)) or a < 0 or b < 0:
                raise Unsafe("ℤ division (rounding of negatives)")
            return sp.floor(a / b)
        if not is_num(b):
            self.denominators.append(b)
        return a / b

    def _bin(self, node, want, local):
        op, a, b = node[1], node[2], node[3]
        if op in ("∧", "/\\", "∨", "\\/", "→", "↔") or INFIX[op][0] == 50:
            return self.truth(node, local)
        if op == "/.":
            x, y = self.value(a, "int", local), self.value(b, "int", local)
            return self._div(x, y, "rat")
        t = self._t(node, want, local)
        if op == "^":
            et = self.infer(b, local) or "nat"
            e = self.value(b, et, local)
            if op == "^" and a[0] == "num" and t in INTEGRAL and is_num(e) and e > MAX_EXP:
                raise Unsafe("huge power")
            base = self.value(a, t, local)
            if is_num(e) and (abs(e) > MAX_EXP):
                raise Unsafe("huge power")
            if et in INTEGRAL:
                if t in INTEGRAL and is_num(e) and e < 0:
                    raise Unsafe("negative ℤ exponent")
                return base ** e
            # rpow: Lean's x^y for x < 0 is not the principal real power
            if is_num(base) and base.is_negative:
                raise Unsafe("real power of a negative base")
            if is_num(base) and base == 0:
                return sp.Integer(1) if (is_num(e) and e == 0) else (sp.Integer(0) if is_num(e) else _raise())
            if not is_num(base):
                # only a base known to be >= 0 with a positive rational exponent: there Lean's rpow is the
                # principal root SymPy computes (elsewhere Lean's x^y = exp(y log x) cos(yπ) is not)
                if not (is_num(e) and e.is_Rational and e > 0 and base.is_nonnegative):
                    raise Unsafe("real power of an unknown that may be negative")
            return base ** e
        if op == "%" and a[0] == "bin" and a[1] == "^" and t in INTEGRAL:  # modular power without the huge number
            m = self.value(b, t, local)
            base = self.value(a[2], t, local)
            e = self.value(a[3], self.infer(a[3], local) or "nat", local)
            if all(is_num(x) and x.is_integer for x in (m, base, e)) and m > 0 and base >= 0 and e >= 0:
                return sp.Integer(pow(int(base), int(e), int(m)))
        if t == "pnat" and op in ("-", "/", "%"):
            raise Unsafe(f"ℕ+ {op} (truncates at 1, not 0)")
        x, y = self.value(a, t, local), self.value(b, t, local)
        if op == "+":
            return x + y
        if op == "*":
            return x * y
        if op == "-":
            if t in ("nat", "pnat", "nnreal"):
                if not (is_num(x) and is_num(y)):
                    raise Unsafe("truncated subtraction of unknowns")
                return sp.Max(x - y, 0)
            return x - y
        if op == "/":
            return self._div(x, y, t)
        if op == "%":
            if t not in INTEGRAL:
                raise Unsafe("% outside ℕ/ℤ")
            if not (is_num(x) and is_num(y)):
                raise Unsafe("% of unknowns")
            if y == 0:
                return x
            return sp.Integer(int(x) % abs(int(y)))
        raise Unsafe(f"operator {op}")

    def truth(self, node, local: dict | None = None) -> bool:
        """A proposition's truth value; :class:`Unsafe` when it cannot be decided exactly."""
        local = local or {}
        k = node[0]
        if k == "not":
            return not self.truth(node[1], local)
        if k == "app" and node[1][0] == "var":
            name = node[1][1]
            if name in ("even", "odd", "nat.prime", "prime", "nat.even", "nat.odd"):
                v = self.value(node[2][0], self.infer(node[2][0], local) or "nat", local)
                if not (is_num(v) and v.is_integer):
                    raise Unsafe(f"{name} of a non-integer")
                if name.endswith("prime"):
                    return bool(sp.isprime(int(v)))
                return (int(v) % 2 == 0) == name.endswith("even")
        if k == "quant":
            raise Unsafe("quantified proposition")
        if k != "bin":
            raise Unsafe(f"not a proposition: {k}")
        op, a, b = node[1], node[2], node[3]
        if op in ("∧", "/\\"):
            return self.truth(a, local) and self.truth(b, local)
        if op in ("∨", "\\/"):
            return self.truth(a, local) or self.truth(b, local)
        if op == "→":
            return (not self.truth(a, local)) or self.truth(b, local)
        if op == "↔":
            return self.truth(a, local) == self.truth(b, local)
        if op in ("∈", "∉"):
            s = self.finset(b, local)
            v = self.value(a, None, local)
            return (any(equal(v, x) for x in s)) == (op == "∈")
        t = join(self.infer(a, local), self.infer(b, local)) or "nat"
        x, y = self.value(a, t, local), self.value(b, t, local)
        if isinstance(x, tuple) or isinstance(y, tuple):
            if op not in ("=", "≠") or not (isinstance(x, tuple) and isinstance(y, tuple)):
                raise Unsafe("tuple comparison")
            same = len(x) == len(y) and all(equal(p, q) for p, q in zip(x, y))
            return same == (op == "=")
        if not (is_num(x) and is_num(y)):
            raise Unsafe("a relation between unknowns")
        if op == "=":
            return equal(x, y)
        if op == "≠":
            return not equal(x, y)
        if op == "∣":
            if not (x.is_integer and y.is_integer):
                raise Unsafe("∣ of non-integers")
            return int(y) == 0 if int(x) == 0 else int(y) % int(x) == 0
        d = compare(x, y)
        return {"<": d < 0, "≤": d <= 0, ">": d > 0, "≥": d >= 0}[op]

    def _app(self, node, want, local):
        f, args = node[1], node[2]
        if f[0] != "var":
            if f[0] == "field":
                raise Unsafe("application of a field")
            raise Unsafe("application of a non-name")
        name = f[1]
        if name in self.env.funcs or name in local:
            fn = self.env.funcs.get(name)
            if fn is None:
                raise Unsafe("local function")
            if len(args) != len(fn.params):
                raise Unsafe(f"{name} applied to {len(args)} arguments")
            vals = [self.value(a, t, local) for a, t in zip(args, fn.arg_types)]
            inner = {**local, **{p: (v, t) for p, v, t in zip(fn.params, vals, fn.arg_types)}}
            if fn.guard is not None:
                op, g = fn.guard
                if not self.truth(("bin", op, ("var", fn.params[0]), g), inner):
                    raise Unsafe(f"{name} outside its defining guard")
            return self.value(fn.body, fn.cod, inner)
        if name in self.env.fun_types and self.env.symbolic_apps:
            ats, cod = self.env.fun_types[name]
            vals = [self.value(a, t, local) for a, t in zip(args, ats)]
            if not all(is_num(v) for v in vals) or len(vals) != len(ats):
                raise Unsafe(f"{name} at a symbolic argument")
            key = f"{name}({', '.join(str(v) for v in vals)})"
            if key not in self.env.values:
                kw = {"integer": True} if cod in INTEGRAL else {"real": True} if cod != "complex" else {}
                if cod in ("nat", "nnreal"):
                    kw["nonnegative"] = True
                self.app_symbols[key] = sp.Symbol(key, **kw)
                self.env.values[key] = self.app_symbols[key]
                self.env.types[key] = cod
            return self.env.values[key]
        if name == "finset.card" and len(args) == 1:  # the argument is a finset, not a number
            return sp.Integer(len(self.finset(args[0], local)))
        t_arg = lambda a: self.infer(a, local) or ("real" if name in REAL_FUNCS else "nat")  # noqa: E731
        vals = [self.value(a, t_arg(a), local) for a in args]
        if name in ("real.sqrt", "nnreal.sqrt"):
            v = vals[0]
            if is_num(v):
                return sp.Integer(0) if compare(v, 0) < 0 else sp.sqrt(v)
            return self._sqrt_symbol(v)
        if name in ("real.log",):
            v = vals[0]
            if not is_num(v):
                raise Unsafe("log of an unknown")
            return sp.Integer(0) if v == 0 else sp.log(sp.Abs(v))
        if name == "real.logb":
            b, v = vals
            if not (is_num(b) and is_num(v)):
                raise Unsafe("logb of an unknown")
            lb = sp.Integer(0) if b == 0 else sp.log(sp.Abs(b))
            lv = sp.Integer(0) if v == 0 else sp.log(sp.Abs(v))
            return sp.Integer(0) if lb == 0 else lv / lb
        if name in ("real.exp",):
            return sp.exp(vals[0])
        if name in ("real.sin", "real.cos", "real.tan"):
            v = vals[0]
            if not is_num(v):
                raise Unsafe("trig of an unknown")
            if name == "real.tan":
                c = sp.cos(v)
                return sp.Integer(0) if equal(c, 0) else sp.sin(v) / c
            return (sp.sin if name == "real.sin" else sp.cos)(v)
        if name in ("abs", "complex.abs"):
            return sp.Abs(vals[0])
        if name in ("int.floor", "floor", "int.ceil", "ceil", "nat.floor"):
            if not is_num(vals[0]):
                raise Unsafe("floor of an unknown")
            return (sp.ceiling if "ceil" in name else sp.floor)(vals[0])
        if not all(is_num(v) or isinstance(v, tuple) for v in vals):
            raise Unsafe(f"{name} of an unknown")
        ints = [int(v) for v in vals if is_num(v) and v.is_integer]
        if name in ("nat.factorial", "nat.fact") and len(ints) == 1:
            if ints[0] > 3000:
                raise Unsafe("huge factorial")
            return sp.factorial(ints[0])
        if name in ("nat.gcd", "gcd", "int.gcd") and len(ints) == 2:
            return sp.Integer(sp.gcd(*ints))
        if name in ("nat.lcm", "lcm", "int.lcm") and len(ints) == 2:
            return sp.Integer(sp.lcm(*ints))
        if name in ("nat.choose",) and len(ints) == 2:
            return sp.binomial(*ints)
        if name == "int.nat_abs" and len(ints) == 1:
            return sp.Integer(abs(ints[0]))
        if name == "nat.digits" and len(ints) == 2:
            return tuple(sp.Integer(d) for d in _digits(ints[1], ints[0]))
        if name == "nat.of_digits" and isinstance(vals[1], tuple):
            b = int(vals[0])
            return sum((d * b ** i for i, d in enumerate(vals[1])), sp.Integer(0))
        raise Unsafe(f"function {name}")

    def _field(self, node, want, local):
        inner, fld = node[1], node[2]
        if fld in ("sum", "prod"):
            v = self.value(inner, want, local)
            if not isinstance(v, tuple):
                raise Unsafe(".sum of a non-list")
            return sum(v, sp.Integer(0)) if fld == "sum" else sp.prod(v)
        if fld == "card":
            return sp.Integer(len(self.finset(inner, local)))
        if fld in ("num", "denom"):
            v = self.value(inner, "rat", local)
            if not (is_num(v) and v.is_rational):
                raise Unsafe(f".{fld} of an unknown")
            r = sp.Rational(v)
            return sp.Integer(r.p if fld == "num" else r.q)
        raise Unsafe(f"field .{fld}")

    def finset(self, node, local) -> list:
        k = node[0]
        if k == "app" and node[1][0] == "var":
            name, args = node[1][1], node[2]
            if name == "finset.filter" and len(args) == 2 and args[0][0] == "quant" and args[0][1] == "λ":
                lam = args[0]
                base = self.finset(args[1], local)
                t = "nat"
                return [x for x in base if self.truth(lam[4], {**local, lam[2][0]: (x, t)})]
            ints = []
            for a in args:
                v = self.value(a, self.infer(a, local) or "nat", local)
                if not (is_num(v) and v.is_integer):
                    raise Unsafe(f"{name} with a non-integer bound")
                ints.append(int(v))
            if name == "finset.range" and len(ints) == 1:
                lo, hi = 0, ints[0] - 1
            elif name == "finset.Icc" and len(ints) == 2:
                lo, hi = ints
            elif name == "finset.Ico" and len(ints) == 2:
                lo, hi = ints[0], ints[1] - 1
            elif name == "finset.Ioc" and len(ints) == 2:
                lo, hi = ints[0] + 1, ints[1]
            elif name == "finset.Ioo" and len(ints) == 2:
                lo, hi = ints[0] + 1, ints[1] - 1
            elif name == "nat.divisors" and len(ints) == 1:
                if ints[0] <= 0 or ints[0] > 10 ** 12:
                    return [] if ints[0] == 0 else _raise()
                return [sp.Integer(d) for d in sp.divisors(ints[0])]
            else:
                raise Unsafe(f"finset {name}")
            if hi - lo + 1 > MAX_TERMS:
                raise Unsafe("finset too large")
            return [sp.Integer(x) for x in range(lo, hi + 1)]
        if k == "setlit":
            return [self.value(x, None, local) for x in node[1]]
        raise Unsafe("unsupported finset")

    def _big(self, node, want, local):
        op, var, s, body = node[1], node[2], node[3], node[4]
        it = self._index_type(s, local)
        elems = self.finset(s, local)
        t = want or self.infer(body, {**local, var: it}) or "nat"
        vals = [self.value(body, t, {**local, var: (x, it)}) for x in elems]
        if op == "∑":
            return sp.Add(*vals) if vals else sp.Integer(0)
        return sp.Mul(*vals) if vals else sp.Integer(1)


def _raise():
    raise Unsafe("undefined value")


def _digits(n: int, base: int) -> list[int]:
    if base < 2 or n < 0:
        raise Unsafe("nat.digits")
    out = []
    while n:
        out.append(n % base)
        n //= base
    return out


REAL_FUNCS = {"real.sqrt", "real.log", "real.logb", "real.exp", "real.sin", "real.cos", "real.tan", "real.pi"}
NAT_FUNCS = {"nat.factorial", "nat.fact", "nat.gcd", "nat.lcm", "nat.choose", "finset.card", "nat.of_digits",
             "gcd", "lcm"}


def equal(x, y) -> bool:
    """Exact equality of two closed SymPy numbers; :class:`Unsafe` when SymPy cannot decide and they agree to 60
    significant digits (the stand-in never guesses)."""
    if isinstance(x, tuple) or isinstance(y, tuple):
        return isinstance(x, tuple) and isinstance(y, tuple) and len(x) == len(y) and all(
            equal(a, b) for a, b in zip(x, y))
    d = x - y
    if d == 0:
        return True
    if d.is_Rational:
        return False
    n = sp.N(d, 60)
    if not n.is_number or n.has(sp.nan, sp.zoo):
        raise Unsafe("undecidable equality")
    if abs(complex(n)) > 1e-40:
        return False
    z = sp.simplify(d)
    if z == 0:
        return True
    z = sp.nsimplify(sp.expand_log(sp.radsimp(z), force=True))
    if z == 0:
        return True
    raise Unsafe("equality SymPy cannot decide")


def compare(x, y) -> int:
    if equal(x, y):
        return 0
    n = sp.N(x - y, 60)
    if not n.is_real:
        raise Unsafe("order on non-real numbers")
    return 1 if n > 0 else -1
