"""A parser for the Lean 3 / mathlib term language of competition statements (reconstruction: the subset miniF2F
and FIMO statements use, checked against them); :mod:`morphlm.reason.leaneval` evaluates its trees.

Parsing follows Lean 3's notation table: ``↔`` 20, ``→`` 25 (right), ``∨`` 30, ``∧`` 35 (right), ``¬`` 40,
relations ``= ≠ < ≤ > ≥ ∣ ∈`` 50, ``+ -`` 65, ``* / %`` 70, ``^`` 75 (right), prefix ``-`` 100 (so ``-x^2`` is
``(-x)^2`` in Lean 3), application and the postfixes ``!``, ``⁻¹``, ``.field`` above that; big operators
``∑ x in s, f`` parse their body at 67 (mathlib), ``∀ ∃ λ`` bodies extend to the end."""

from __future__ import annotations

import re
from typing import Any


class LeanSyntaxError(ValueError):
    """The text is not in the supported subset of Lean 3 term syntax."""


class Unsafe(Exception):
    """The expression cannot be evaluated with Lean's semantics here (unknown function, symbolic ℕ subtraction...)."""


# ------------------------------------------------------------------------------------------------ tokenizer
_TOKEN_RE = re.compile(r"""
    (?P<num>\d+(?:\.\d+)?)
  | (?P<fld>\.[A-Za-z_]\w*)
  | (?P<op>⁻¹|/\.|\\/|/\\|≠|≤|≥|→|↔|∧|∨|¬|∣|∈|∉|∑|∏|∀|∃|λ|↑|⌊|⌋|π|!|\(|\)|\[|\]|\{|\}|,|\+|-|\*|/|%|\^|=|<|>|:|\||×)
  | (?P<id>[A-Za-z_α-ωΑ-Ωℕℤℚℝℂ'][\w'₀-₉.]*)
  | (?P<ws>\s+)
""", re.VERBOSE)

TYPES = {"ℕ": "nat", "ℤ": "int", "ℚ": "rat", "ℝ": "real", "ℂ": "complex", "nnreal": "nnreal", "ℕ+": "pnat",
         "nat": "nat", "int": "int", "rat": "rat", "real": "real", "complex": "complex"}
RANK = {"pnat": 0, "nat": 0, "int": 1, "rat": 2, "nnreal": 3, "real": 3, "complex": 4}
INTEGRAL = ("nat", "pnat", "int")


def tokenize(text: str) -> list[str]:
    out, i = [], 0
    while i < len(text):
        m = _TOKEN_RE.match(text, i)
        if not m or m.end() == i:
            raise LeanSyntaxError(f"unsupported character {text[i]!r} at {i} in {text!r}")
        if m.lastgroup != "ws":
            tok = m.group()
            if m.lastgroup == "id" and tok.endswith("."):
                tok = tok[:-1]
                out.append(tok)
                i = m.end() - 1
                continue
            out.append(tok)
        i = m.end()
    return out


def lean_type(text: str) -> str | None:
    """``ℝ`` -> ``real``; ``ℕ → ℝ`` -> None (not a number type)."""
    t = text.strip()
    if t.startswith("(") and t.endswith(")"):
        t = t[1:-1].strip()
    return TYPES.get(t)


# ------------------------------------------------------------------------------------------------ parser
INFIX = {"↔": (20, "r"), "→": (25, "r"), "∨": (30, "r"), "\\/": (30, "r"), "∧": (35, "r"), "/\\": (35, "r"),
         "=": (50, "l"), "≠": (50, "l"), "<": (50, "l"), "≤": (50, "l"), ">": (50, "l"), "≥": (50, "l"),
         "∣": (50, "l"), "∈": (50, "l"), "∉": (50, "l"), "+": (65, "l"), "-": (65, "l"), "*": (70, "l"),
         "/": (70, "l"), "%": (70, "l"), "/.": (70, "l"), "^": (75, "r")}
_STOP = set(INFIX) | {")", "]", "}", ",", ":", "⌋", "|", "!", "⁻¹", "×"}


class Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = tokenize(text)
        self.i = 0

    def peek(self, k: int = 0) -> str | None:
        return self.toks[self.i + k] if self.i + k < len(self.toks) else None

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (want is not None and tok != want):
            raise LeanSyntaxError(f"expected {want or 'a term'} at token {self.i} of {self.text!r}, got {tok!r}")
        self.i += 1
        return tok

    def parse(self):
        e = self.expr(0)
        if self.peek() is not None:
            raise LeanSyntaxError(f"unexpected {self.peek()!r} at token {self.i} of {self.text!r}")
        return e

    def expr(self, rbp: int):
        left = self.prefix()
        while True:
            tok = self.peek()
            if tok in INFIX:
                bp, assoc = INFIX[tok]
                if bp <= rbp:
                    break
                self.take()
                right = self.expr(bp - 1 if assoc == "r" else bp)
                left = ("bin", tok, left, right)
            elif tok == "!":
                self.take()
                left = ("app", ("var", "nat.factorial"), [left])
            elif tok == "⁻¹":
                self.take()
                left = ("inv", left)
            else:
                break
        return left

    def prefix(self):
        tok = self.peek()
        if tok == "-":
            self.take()
            return ("neg", self.expr(99))
        if tok == "¬":
            self.take()
            return ("not", self.expr(40))
        if tok == "↑":
            self.take()
            return ("coe", self.prefix() if self.peek() in ("∑", "∏") else self.prefix_app_or_atom())
        if tok in ("∑", "∏"):
            self.take()
            var = self.take()
            if self.peek() == ":":
                self.take()
                self.take()
            self.take("in")
            s = self.expr(0)
            self.take(",")
            return ("big", tok, var, s, self.expr(66))
        if tok in ("∀", "∃", "λ"):
            self.take()
            names, guard = [], None
            while self.peek() not in (",", ":", None) and self.peek() not in ("≠", "≥", ">", "<", "≤", "∈"):
                n = self.take()
                if n == "(":  # ∀ (x : ℝ), ...
                    while self.peek() != ":":
                        names.append(self.take())
                    self.take(":")
                    depth = 0
                    while not (self.peek() == ")" and depth == 0):
                        t = self.take()
                        depth += (t == "(") - (t == ")")
                    self.take(")")
                else:
                    names.append(n)
            if self.peek() == ":":
                self.take()
                self._skip_type()
            if self.peek() in ("≠", "≥", ">", "<", "≤", "∈"):  # ∀ x ≠ -2, ...  /  ∀ n ≥ 3, ...
                op = self.take()
                guard = (op, self.expr(51))
            self.take(",")
            body = self.expr(0)
            return ("quant", tok, names, guard, body)
        return self.prefix_app_or_atom()

    def _skip_type(self):
        while self.peek() not in (",", None, "≠", "≥", ">", "<", "≤", "∈"):
            self.take()

    def prefix_app_or_atom(self):
        head = self.atom()
        if head[0] in ("var", "field"):
            args = []
            while self._starts_atom(self.peek()):
                args.append(self.atom())
            if args:
                return ("app", head, args)
        return head

    @staticmethod
    def _starts_atom(tok: str | None) -> bool:
        if tok is None or tok in _STOP or tok in ("in", "∑", "∏", "∀", "∃", "λ", "¬") or tok.startswith("."):
            return False
        return tok in ("(", "[", "⌊", "π", "↑", "{") or tok[0].isdigit() or bool(re.match(r"[A-Za-z_α-ωΑ-Ω']", tok))

    def atom(self):
        tok = self.take()
        if tok[0].isdigit():
            node = ("num", tok)
        elif tok == "π":
            node = ("var", "real.pi")
        elif tok == "↑":
            node = ("coe", self.atom())
        elif tok == "⌊":
            e = self.expr(0)
            self.take("⌋")
            node = ("app", ("var", "int.floor"), [e])
        elif tok == "(":
            items = [self.expr(0)]
            if self.peek() == ":":
                self.take()
                start = self.i
                depth = 0
                while not (self.peek() == ")" and depth == 0):
                    t = self.take()
                    depth += (t == "(") - (t == ")")
                ty = " ".join(self.toks[start:self.i])
                self.take(")")
                node = ("asc", items[0], ty)
            else:
                while self.peek() == ",":
                    self.take()
                    items.append(self.expr(0))
                self.take(")")
                node = items[0] if len(items) == 1 else ("tuple", items)
        elif tok == "[":
            items = []
            while self.peek() != "]":
                items.append(self.expr(0))
                if self.peek() == ",":
                    self.take()
            self.take("]")
            node = ("list", items)
        elif tok == "{":
            items = []
            while self.peek() != "}":
                items.append(self.expr(0))
                if self.peek() == ",":
                    self.take()
            self.take("}")
            node = ("setlit", items)
        elif re.match(r"[A-Za-z_α-ωΑ-Ωℕℤℚℝℂ']", tok):
            node = ("var", tok)
        else:
            raise LeanSyntaxError(f"unexpected {tok!r} at token {self.i - 1} of {self.text!r}")
        while (self.peek() or "").startswith("."):  # postfix field access: `(nat.digits 10 n).sum`
            node = ("field", node, self.take()[1:])
        return node


def parse(text: str):
    """Parse a Lean 3 term into a tuple AST (see :class:`Parser`)."""
    p = Parser(text)
    node = p.parse()
    return _fields(node)


def _fields(node):
    """Split dotted identifiers whose head is not a namespace (``x.denom``, ``σ.2``) into field accesses."""
    if not isinstance(node, tuple):
        return node
    if node[0] == "var" and "." in node[1] and node[1].split(".")[0] not in NAMESPACES:
        head, *rest = node[1].split(".")
        out: Any = ("var", head)
        for r in rest:
            out = ("field", out, r)
        return out
    return tuple(_fields(c) if isinstance(c, tuple) else [_fields(x) for x in c] if isinstance(c, list) else c
                 for c in node)


NAMESPACES = {"real", "nat", "int", "rat", "complex", "finset", "nnreal", "polynomial", "set", "list", "multiset",
              "fin", "zmod", "function", "equiv"}


def free_vars(node, bound: frozenset = frozenset()) -> set[str]:
    if not isinstance(node, tuple):
        return set()
    kind = node[0]
    if kind == "var":
        return set() if node[1] in bound or "." in node[1] else {node[1]}
    if kind == "big":
        return free_vars(node[3], bound) | free_vars(node[4], bound | {node[2]})
    if kind == "quant":
        inner = bound | set(node[2])
        g = free_vars(node[3][1], inner) if node[3] else set()
        return g | free_vars(node[4], inner)
    out: set[str] = set()
    for c in node[1:]:
        if isinstance(c, tuple):
            out |= free_vars(c, bound)
        elif isinstance(c, list):
            for x in c:
                out |= free_vars(x, bound)
    return out
