"""Hard-Mode statements and the placeholder-only rewrite (Discover-and-Prove, Liu et al., ACL 2026, arXiv
2604.15839, §3: "Easy Mode" puts the answer inside the formal statement, "Hard Mode" hides it behind
``abbrev NAME_solution : T := sorry`` so the prover must first find it).

The transform (reconstruction for Lean 3 statements; DAP ships Lean 4 files): a statement whose conclusion is a
single top-level equation ``LHS = c`` with ``c`` a numeric literal (numerals, ``+ - * / ^``, parentheses, type
ascriptions such as ``(658:ℤ)``) is answer-style. Its Hard form is::

    abbrev NAME_solution : T := sorry

    theorem NAME binders :
      LHS = NAME_solution :=
    sorry

with ``T`` the Lean type of the equation's sides (an ascription in the conclusion, else the type of the
variables in ``LHS``, else ℕ, Lean's default for numerals), and ``c`` recorded as the gold answer.

The rewrite that puts a discovered answer back may touch ONLY the placeholder's body: DAP reports that a prover
that sees a statement it may change finds spurious proofs (a placeholder value or an edited goal that makes the
theorem trivial). :func:`check_rewrite` refuses any rewritten text whose bytes differ from the Hard statement
outside the placeholder body, or whose body is not a single closed term.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .formal import FormalStatement, balanced, is_number_literal, split_equation  # noqa: F401 (re-exported)

_TYPE_NAMES = {"ℝ": "ℝ", "ℕ": "ℕ", "ℤ": "ℤ", "ℚ": "ℚ", "ℂ": "ℂ", "nnreal": "nnreal", "ℕ+": "ℕ+"}


class SpuriousRewriteError(ValueError):
    """A rewrite changed more than the answer placeholder (DAP's spurious-proof pitfall)."""


@dataclass
class HardStatement:
    name: str
    placeholder: str  # NAME_solution
    answer_type: str  # Lean type of the answer (ℝ, ℕ, ℤ, ℚ, ℂ, ...)
    gold: str  # the masked constant, as written in the Easy statement
    lhs: str  # the conclusion's left-hand side
    text: str  # the Hard statement (abbrev + theorem, both `sorry`)
    statement: FormalStatement

    @property
    def _body_span(self) -> tuple[int, int]:
        head = f"abbrev {self.placeholder} : {self.answer_type} := "
        start = self.text.index(head) + len(head)
        return start, start + len("sorry")

    def fill(self, answer: str) -> str:
        """The Easy statement with ``answer`` (a Lean term) as the placeholder's body; the theorem keeps ``sorry``."""
        _check_term(answer, self.placeholder)
        a, b = self._body_span
        return self.text[:a] + answer.strip() + self.text[b:]


LEAN_NAMES = {"nat": "ℕ", "pnat": "ℕ+", "int": "ℤ", "rat": "ℚ", "real": "ℝ", "nnreal": "nnreal", "complex": "ℂ"}


def answer_type(stmt: FormalStatement, lhs: str, rhs: str) -> str:
    """The Lean type of the equation's sides (reconstruction of Lean 3's elaboration of ``@eq ?α lhs rhs``): the
    LHS's own type (variables, ascriptions, function codomains; :mod:`morphlm.reason.leanexpr`), else the RHS's,
    else ℕ (bare numerals). When the sides do not parse: a regex reading of the same rule."""
    from .leaneval import Env, Evaluator
    from .leanexpr import LeanSyntaxError, lean_type, parse

    env = Env()
    for b in stmt.variables:
        t = lean_type(b.type)
        if t:
            env.types[b.name] = t
        else:
            parts = [lean_type(p) for p in b.type.split("→")]
            if len(parts) > 1 and all(parts):
                env.fun_types[b.name] = (parts[:-1], parts[-1])
    try:
        ev = Evaluator(env)
        t = ev.infer(parse(lhs)) or ev.infer(parse(rhs)) or "nat"
        return LEAN_NAMES.get(t, "ℕ")
    except LeanSyntaxError:
        pass
    for side in (rhs, lhs):
        m = re.search(r":\s*(ℝ|ℕ|ℤ|ℚ|ℂ|nnreal)\s*\)", side)
        if m:
            return m.group(1)
    rank = ["ℕ+", "ℕ", "ℤ", "ℚ", "nnreal", "ℝ", "ℂ"]
    best = None
    idents = set(re.findall(r"[^\W\d][\w'₀-₉]*", lhs.replace("real.", "").replace("nat.", "")))
    if re.search(r"real\.(sqrt|log|cos|sin|tan|exp|pi|logb)|π", lhs):
        best = "ℝ"
    for b in stmt.variables:
        if b.name in idents:
            t = b.type.split("→")[-1].strip()
            if t in rank and (best is None or rank.index(t) > rank.index(best)):
                best = t
    if best in ("ℕ+",):
        best = "ℕ"
    return best or "ℕ"


def to_hard_mode(stmt: FormalStatement) -> HardStatement | None:
    """The Hard form of an answer-style statement, or None when the conclusion is not ``LHS = <number>``."""
    eq = split_equation(stmt.conclusion)
    if eq is None or not is_number_literal(eq[1]):
        return None
    lhs, rhs = eq
    t = answer_type(stmt, lhs, rhs)
    ph = f"{stmt.name}_solution"
    binder_lines = []
    for b in _binder_groups(stmt):
        binder_lines.append(f"  {b}")
    text = (f"abbrev {ph} : {t} := sorry\n\ntheorem {stmt.name}" + "".join("\n" + b for b in binder_lines)
            + f" :\n  {lhs} = {ph} :=\nsorry\n")
    return HardStatement(stmt.name, ph, t, rhs, lhs, text, stmt)


def _binder_groups(stmt: FormalStatement) -> list[str]:
    groups: list[tuple[list[str], str, str]] = []
    for b in stmt.binders:
        if groups and groups[-1][1] == b.type and groups[-1][2] == b.bracket and b.kind == "var":
            groups[-1][0].append(b.name)
        else:
            groups.append(([b.name], b.type, b.bracket))
    close = {"(": ")", "{": "}", "[": "]", "⦃": "⦄"}
    out = []
    for names, t, br in groups:
        out.append(f"{br}{t}{close[br]}" if names == ["_inst"] else f"{br}{' '.join(names)} : {t}{close[br]}")
    return out


def _check_term(answer: str, placeholder: str) -> None:
    a = answer.strip()
    problems = []
    if not a:
        problems.append("the answer is empty")
    if "\n" in a:
        problems.append("the answer spans several lines")
    if not balanced(a):
        problems.append("the answer's brackets are unbalanced")
    for bad in ("sorry", ":=", "theorem", "abbrev", "lemma", placeholder, "begin", "--", "/-"):
        if bad in a:
            problems.append(f"the answer contains {bad!r}")
    if problems:
        raise SpuriousRewriteError(f"refused answer {answer!r}: " + "; ".join(problems)
                                   + " — the body of the placeholder must be one closed term")


def check_rewrite(hard: HardStatement, rewritten: str) -> str:
    """Accept ``rewritten`` only if it equals the Hard statement except for the placeholder's body; return that
    body (the answer). Anything else (an edited hypothesis or goal, a second placeholder, a proof) raises
    :class:`SpuriousRewriteError` naming the first difference."""
    a, b = hard._body_span
    prefix, suffix = hard.text[:a], hard.text[b:]
    if not rewritten.startswith(prefix) or not rewritten.endswith(suffix) or len(rewritten) < len(prefix) + len(
            suffix):
        old, new = hard.text.split("\n"), rewritten.split("\n")
        diff = next((k for k in range(max(len(old), len(new)))
                     if k >= len(old) or k >= len(new) or (old[k] != new[k] and not old[k].startswith("abbrev "))),
                    None)
        where = (f"line {diff + 1}: {old[diff] if diff < len(old) else '<none>'!r} -> "
                 f"{new[diff] if diff < len(new) else '<none>'!r}" if diff is not None else "the abbrev line")
        raise SpuriousRewriteError(f"{hard.name}: the rewrite changed more than the answer placeholder ({where}); "
                                   f"only the `sorry` of `abbrev {hard.placeholder}` may be replaced")
    body = rewritten[len(prefix):len(rewritten) - len(suffix)]
    _check_term(body, hard.placeholder)
    return body.strip()
