"""TRIGO data loaders (Xiong et al., EMNLP 2023, arXiv 2310.10180): Lean 3 lemma files (TG-REAL
``Trigo_*.lean``, TRIGO-web ``unlabel_test.lean``, the generated TG-k test sets and files written by
``morphlm reason generate``), GOAL → PROOFSTEP step files (``train_raw_299_new.txt``) and name lists.

Every loader takes a file or a folder (a folder: every file with the loader's suffix, sorted, recursively).
A malformed lemma or step line, or a lemma with an expression the parser cannot read, is skipped and counted
(in the :class:`LoadReport` passed as ``report``); ``strict=True`` refuses it instead, with
:class:`TrigoFormatError` (malformed line) or :class:`~morphlm.reason.trigo_expr.TrigoParseError` (unreadable
expression), both naming the file and line."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .trigo_expr import TrigoError, TrigoParseError, parse_expr


class TrigoFormatError(TrigoError):
    """A malformed lemma header or step line (names the file and line)."""


@dataclass
class Statement:
    """One ``lemma NAME (hyps) : LHS = RHS :=`` with SymPy trees for both sides.

    ``hyps`` are the hypotheses as Lean text (``cos(pi/12) ≠ 0``); ``proof`` the tactic block's lines (empty when
    ``sorry`` or absent); ``gold`` the gym actions of a gold proof when the file carries them (generator output);
    ``source`` is ``file:line``; ``ints`` the variables declared integer (``variable n : ℤ``, ``(n : ℤ)``)."""

    name: str
    lhs: object
    rhs: object
    hyps: list = field(default_factory=list)
    proof: list = field(default_factory=list)
    gold: Optional[list] = None
    source: str = ""
    text: str = ""
    ints: list = field(default_factory=list)


@dataclass
class Step:
    """One ``GOAL <tactic state> PROOFSTEP <tactic>`` line."""

    goal: str
    tactic: str
    source: str = ""


@dataclass
class LoadReport:
    """What a loader saw: items kept and lines skipped (with the first few reasons)."""

    kept: int = 0
    skipped: int = 0
    reasons: list = field(default_factory=list)

    def skip(self, where: str, why: str, strict: bool):
        if strict:
            raise TrigoFormatError(f"{where}: {why} (fix the line or load without --strict to skip it)")
        self.skipped += 1
        if len(self.reasons) < 10:
            self.reasons.append(f"{where}: {why}")


def _files(path, suffixes: tuple) -> list[Path]:
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(suffixes))
        if not files:
            raise FileNotFoundError(f"no {'/'.join(suffixes)} file under {p}")
        return files
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist (give a TRIGO .lean/.txt file or a folder of them)")
    return [p]


_HEAD = re.compile(r"^\s*(?:lemma|theorem)\s+(?P<name>[^\s:(]+)\s*(?P<rest>.*)$")


def parse_statement(text: str, name: Optional[str] = None, where: str = "<text>") -> Statement:
    """A lemma header (``lemma N (h0 : ..) : lhs = rhs :=``) or a bare equation ``lhs = rhs`` → Statement.

    Raises :class:`TrigoFormatError` for a header that is not ``... : lhs = rhs`` and
    :class:`TrigoParseError` for a side SymPy cannot read (both name ``where``)."""
    src = text.strip()
    hyps: list[str] = []
    ints: list[str] = []
    m = _HEAD.match(src)
    if m:
        name = m.group("name")
        rest = m.group("rest").strip()
        while rest.startswith("("):
            depth = 0
            for j, ch in enumerate(rest):
                depth += ch == "("
                depth -= ch == ")"
                if depth == 0:
                    break
            else:
                raise TrigoFormatError(f"{where}: unbalanced parentheses in the hypotheses of {name}")
            inner = rest[1:j]
            if ":" not in inner:
                raise TrigoFormatError(f"{where}: hypothesis ({inner}) of {name} has no ':'")
            names, typ = (p.strip() for p in inner.split(":", 1))
            if typ in _TYPES:  # a binder `(n : ℤ)`, not a hypothesis
                if typ in _INT_TYPES:
                    ints.extend(names.split())
            else:
                hyps.append(typ)
            rest = rest[j + 1:].strip()
        if not rest.startswith(":"):
            raise TrigoFormatError(f"{where}: expected ': lhs = rhs :=' after the name and hypotheses of {name}")
        body = rest[1:]
    else:
        body = src
    body = body.strip()
    if body.endswith(":="):
        body = body[:-2]
    elif ":=" in body:
        body = body.split(":=", 1)[0]
    sides = body.split("=")
    if len(sides) != 2:
        raise TrigoFormatError(f"{where}: statement {body.strip()!r} is not one equation 'lhs = rhs'")
    try:
        lhs, rhs = parse_expr(sides[0]), parse_expr(sides[1])
    except TrigoParseError as exc:
        raise TrigoParseError(f"{where}: {exc}") from None
    return Statement(name=name or "statement", lhs=lhs, rhs=rhs, hyps=hyps, source=where, text=body.strip(),
                     ints=ints)


_TYPES = {"ℝ", "real", "ℤ", "int", "ℕ", "nat"}
_INT_TYPES = {"ℤ", "int", "ℕ", "nat"}
_VARIABLE = re.compile(r"^\s*variables?\s+(?P<rest>.+)$")


def _declared_ints(line: str) -> list[str]:
    """Integer variables declared by a ``variable(s)`` line: ``variable n : ℤ`` or ``variables (n m : ℤ)``."""
    m = _VARIABLE.match(line)
    if not m:
        return []
    rest = m.group("rest").strip()
    groups = re.findall(r"[({]([^(){}]*)[)}]", rest) or [rest]
    out = []
    for g in groups:
        if ":" in g:
            names, typ = (p.strip() for p in g.split(":", 1))
            if typ in _INT_TYPES:
                out.extend(names.split())
    return out


_GOLD = re.compile(r"^\s*--\s*gold:\s*(?P<act>.+?)\s*$")


def load_trigo(path, strict: bool = False, report: Optional[LoadReport] = None) -> list[Statement]:
    """Every lemma in a Lean 3 file or folder (``.lean``). Proof lines between ``begin`` and ``end`` are kept
    (``sorry`` dropped); ``-- gold: ACTION`` comment lines (written by the generator) become ``gold``."""
    rep = report if report is not None else LoadReport()
    out: list[Statement] = []
    for f in _files(path, (".lean",)):
        lines = f.read_text(encoding="utf-8", errors="replace").splitlines()
        cur: Optional[Statement] = None
        in_proof = False
        ints: list[str] = []
        for no, line in enumerate(lines, 1):
            where = f"{f}:{no}"
            s = line.strip()
            if cur is None or not in_proof:
                ints.extend(_declared_ints(line))
            if re.match(r"^(lemma|theorem)\b", s):
                cur = None
                in_proof = False
                header = s
                k = no
                while ":=" not in header and k < len(lines) and k < no + 20:  # a header over several lines
                    header += " " + lines[k].strip()
                    k += 1
                try:
                    cur = parse_statement(header, where=where)
                except TrigoFormatError as exc:
                    rep.skip(where, str(exc).split(": ", 2)[-1], strict)
                    continue
                except TrigoParseError:
                    if strict:
                        raise
                    rep.skip(where, "an expression SymPy cannot read", strict)
                    continue
                cur.ints = sorted(set(cur.ints) | {v for v in ints if v in {s.name for s in
                                                                          cur.lhs.free_symbols | cur.rhs.free_symbols}})
                out.append(cur)
                rep.kept += 1
                continue
            if cur is None:
                continue
            g = _GOLD.match(line)
            if g:
                cur.gold = (cur.gold or []) + [g.group("act")]
                continue
            if s == "begin":
                in_proof = True
            elif s == "end" and in_proof:
                in_proof = False
                cur = None
            elif in_proof and s and s not in ("sorry", "sorry,"):
                cur.proof.append(s)
    return out


def load_steps(path, strict: bool = False, report: Optional[LoadReport] = None) -> list[Step]:
    """GOAL → PROOFSTEP pairs from a file or folder (``.txt``); blank lines are ignored."""
    rep = report if report is not None else LoadReport()
    out: list[Step] = []
    for f in _files(path, (".txt",)):
        for no, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{f}:{no}"
            if not line.startswith("GOAL ") or " PROOFSTEP " not in line:
                rep.skip(where, "not a 'GOAL <state> PROOFSTEP <tactic>' line", strict)
                continue
            goal, tactic = line[5:].rsplit(" PROOFSTEP ", 1)
            if not goal.strip() or not tactic.strip():
                rep.skip(where, "empty goal or tactic", strict)
                continue
            out.append(Step(goal=goal.strip(), tactic=tactic.strip(), source=where))
            rep.kept += 1
    return out


def load_names(path) -> list[str]:
    """A name list (``test_valid_names_set.txt``, ``test_txt_step1.txt``): the first word of each line."""
    return [ln.split()[0] for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
