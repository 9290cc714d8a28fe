"""Formal statement sets: FIMO (Liu et al. 2023, arXiv 2309.04295) and miniF2F (Zheng, Han, Polu, ICLR 2022,
arXiv 2109.00110), both Lean 3, read without Lean.

A statement is the header of a ``theorem NAME binders : conclusion :=`` declaration; the proof that follows
(``sorry`` or a tactic block) is not kept. The header is split at depth 0 of the brackets into binder groups
``(x y : ℝ)`` / ``{..}`` / ``[..]`` and the conclusion after the last top-level ``:``. A declaration whose header
cannot be split (no ``:=``, unbalanced brackets, no conclusion) is malformed: :class:`FormalParseError` names the file
and line; loaders skip it and count it, or raise under ``strict=True``.

Statistics (:func:`statistics`): counts by source (the name's prefix: mathd / amc / aime / imo / induction /
algebra / numbertheory for miniF2F; algebra / number_theory for FIMO) and the answer-style count, i.e. statements
whose conclusion ends ``= <number>`` and so have a Hard-Mode form (:mod:`morphlm.reason.hardmode`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OPEN = "([{⟨"
CLOSE = ")]}⟩"
_TYPE_RE = re.compile(r"^\s*(?:[ℕℤℚℝℂ]|ℕ\+|nnreal|ennreal|real|nat|int|rat|complex|Prop|Type\*?|"
                      r"finset\s+\S+|set\s+\S+|fin\s+\S+|equiv\s+\S+\s+\S+|polynomial\s+\S+|zmod\s+\S+|"
                      r"list\s+\S+|multiset\s+\S+|[ℕℤℚℝℂ]\s*\[X\])"
                      r"(?:\s*(?:→|×)\s*(?:[ℕℤℚℝℂ]|ℕ\+|nnreal|ennreal|Prop|fin\s+\S+|finset\s+\S+|set\s+\S+))*\s*$")


class FormalParseError(ValueError):
    """A malformed Lean statement; the message names the file and line and what is wrong."""

    def __init__(self, path: str, line: int, message: str):
        self.path, self.line = str(path), line
        super().__init__(f"{path}:{line}: {message}")


@dataclass
class Binder:
    """One name of a binder group: ``kind`` is ``var`` (a term of a type) or ``hyp`` (a hypothesis)."""

    name: str
    type: str
    kind: str
    bracket: str = "("


@dataclass
class FormalStatement:
    name: str
    binders: list[Binder]
    conclusion: str
    header: str  # "theorem NAME ... :" up to (excluding) ":="
    path: str = ""
    line: int = 0
    split: str = ""
    informal: dict[str, Any] | None = None

    @property
    def source(self) -> str:
        return source_of(self.name)

    @property
    def variables(self) -> list[Binder]:
        return [b for b in self.binders if b.kind == "var"]

    @property
    def hypotheses(self) -> list[Binder]:
        return [b for b in self.binders if b.kind == "hyp"]


def source_of(name: str) -> str:
    """The competition/source of a problem from its name: mathd, amc, aime, imo, induction, algebra, numbertheory
    (miniF2F) or algebra / number_theory (FIMO: ``fimo_<year>_<cat>_p<n>``)."""
    if name.startswith("fimo_"):
        return "number_theory" if "_number_theory_" in name else "algebra"
    head = name.split("_", 1)[0]
    for family in ("amc", "aime"):  # amc12a/amc12b/amc12, aimeI/aimeII
        if head.startswith(family):
            return family
    return head


def is_type_text(text: str) -> bool:
    """Whether a binder's annotation is a type (a variable binder) rather than a proposition (a hypothesis)."""
    return bool(_TYPE_RE.match(text))


def _depth_scan(text: str):
    """Yield (index, char, depth-before-char) with bracket depth over ``()[]{}⟨⟩``."""
    depth = 0
    for i, ch in enumerate(text):
        if ch in CLOSE:
            depth -= 1
        yield i, ch, depth
        if ch in OPEN:
            depth += 1


def balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        if ch in OPEN:
            depth += 1
        elif ch in CLOSE:
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def parse_header(header: str, *, path: str = "<text>", line: int = 1) -> FormalStatement:
    """Parse ``theorem NAME binders : conclusion`` (the text before ``:=``) into a :class:`FormalStatement`."""
    m = re.match(r"\s*(?:theorem|lemma)\s+(\S+)", header)
    if not m:
        raise FormalParseError(path, line, "expected `theorem NAME ...`")
    name = m.group(1)
    rest = header[m.end():]
    if not balanced(rest):
        raise FormalParseError(path, line, f"{name}: unbalanced brackets in the statement")
    binders: list[Binder] = []
    i = 0
    while True:
        while i < len(rest) and rest[i].isspace():
            i += 1
        if i < len(rest) and rest[i] in "([{⦃":
            close = {"(": ")", "[": "]", "{": "}", "⦃": "⦄"}[rest[i]]
            depth, j = 0, i
            while j < len(rest):
                if rest[j] in "([{⦃":
                    depth += 1
                elif rest[j] in ")]}⦄":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if rest[j] != close:
                raise FormalParseError(path, line, f"{name}: binder group opened by {rest[i]!r} is not closed")
            group = rest[i + 1:j]
            colon = _top_level_colon(group)
            if colon is None:
                if rest[i] == "[":  # anonymous instance binder [fact p.prime]
                    binders.append(Binder("_inst", group.strip(), "hyp", "["))
                    i = j + 1
                    continue
                raise FormalParseError(path, line, f"{name}: binder group ({group.strip()}) has no `:`")
            names, ann = group[:colon].split(), group[colon + 1:].strip()
            if not names or not ann:
                raise FormalParseError(path, line, f"{name}: empty names or type in binder ({group.strip()})")
            kind = "var" if is_type_text(ann) else "hyp"
            binders.extend(Binder(n, ann, kind, rest[i]) for n in names)
            i = j + 1
            continue
        break
    tail = rest[i:].strip()
    if not tail.startswith(":"):
        raise FormalParseError(path, line, f"{name}: expected `:` and the conclusion after the binders, got "
                                           f"{tail[:30]!r}")
    conclusion = " ".join(tail[1:].split())
    if not conclusion:
        raise FormalParseError(path, line, f"{name}: empty conclusion")
    return FormalStatement(name=name, binders=binders, conclusion=conclusion, header=header.strip(), path=str(path),
                           line=line)


def _top_level_colon(text: str) -> int | None:
    for i, ch, depth in _depth_scan(text):
        if depth == 0 and ch == ":" and not text.startswith(":=", i):
            return i
    return None


def parse_lean_file(path: str | Path, *, strict: bool = False, split: str = "") -> tuple[list[FormalStatement],
                                                                                            list[str]]:
    """Every ``theorem`` of a Lean 3 file. Returns (statements, skipped) where ``skipped`` holds one
    ``file:line: reason`` per malformed declaration; ``strict=True`` raises the first instead."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass a Lean 3 file (or a folder holding .lean files)")
    lines = path.read_text(encoding="utf-8").split("\n")
    out: list[FormalStatement] = []
    skipped: list[str] = []
    # only `theorem`s are statements of the set (miniF2F's test file also holds a helper `lemma`)
    starts = [k for k, s in enumerate(lines) if re.match(r"theorem\s", s)]
    for n, k in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        block = "\n".join(re.sub(r"--.*$", "", s) for s in lines[k:end])  # Lean line comments
        try:
            pos = _header_end(block)
            if pos is None:
                raise FormalParseError(str(path), k + 1, f"{block.split()[1] if len(block.split()) > 1 else '?'}: "
                                                         f"no `:=` ends the statement")
            st = parse_header(block[:pos], path=str(path), line=k + 1)
        except FormalParseError as exc:
            if strict:
                raise
            skipped.append(str(exc))
            continue
        st.split = split
        out.append(st)
    return out, skipped


def _header_end(block: str) -> int | None:
    for i, ch, depth in _depth_scan(block):
        if depth == 0 and block.startswith(":=", i):
            return i
    return None


@dataclass
class FormalSet:
    """A loaded statement set with the malformed declarations it skipped."""

    name: str
    statements: list[FormalStatement]
    skipped: list[str] = field(default_factory=list)
    informal: dict[str, dict] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.statements)


def _data_root(root: str | Path | None, sub: str) -> Path:
    if root is not None:
        return Path(root)
    from ..data.paths import data_dir

    return data_dir() / sub


def load_minif2f(split: str = "test", root: str | Path | None = None, *, strict: bool = False) -> FormalSet:
    """miniF2F's Lean 3 ``test`` or ``valid`` statements (244 each) from ``ROOT/lean/src/{split}.lean``; ROOT
    defaults to ``minif2f/`` of the data folder ($MORPHLM_DATA)."""
    if split not in ("test", "valid"):
        raise ValueError(f"split={split!r}: miniF2F has `test` and `valid`")
    base = _data_root(root, "minif2f")
    path = base / "lean" / "src" / f"{split}.lean" if (base / "lean").is_dir() else base / f"{split}.lean"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: point --root at the miniF2F folder holding lean/src/"
                                f"{split}.lean (or set $MORPHLM_DATA)")
    st, skipped = parse_lean_file(path, strict=strict, split=split)
    return FormalSet(f"minif2f-{split}", st, skipped)


def load_fimo(root: str | Path | None = None, *, strict: bool = False) -> FormalSet:
    """FIMO: the 149 Lean 3 statements of ``ROOT/lean/fimo.lean`` and the 245 informal problems of
    ``ROOT/informal/*.json`` (problem_name, informal_statement, informal_proof); each formal statement carries its
    informal record. A JSON file without those keys is malformed (skipped with a count, or raised under strict)."""
    base = _data_root(root, "fimo")
    path = base / "lean" / "fimo.lean"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: point --root at the FIMO folder (lean/fimo.lean, "
                                f"informal/*.json) or set $MORPHLM_DATA")
    st, skipped = parse_lean_file(path, strict=strict, split="fimo")
    informal: dict[str, dict] = {}
    for f in sorted((base / "informal").glob("*.json")):
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
            if not isinstance(rec, dict) or not {"problem_name", "informal_statement", "informal_proof"} <= set(rec):
                raise FormalParseError(str(f), 1, "expected an object with problem_name, informal_statement, "
                                                  "informal_proof")
        except json.JSONDecodeError as exc:
            err = FormalParseError(str(f), exc.lineno, f"invalid JSON: {exc.msg}")
            if strict:
                raise err from exc
            skipped.append(str(err))
            continue
        except FormalParseError as exc:
            if strict:
                raise
            skipped.append(str(exc))
            continue
        informal[rec["problem_name"]] = rec
    for s in st:
        s.informal = informal.get(s.name)
    return FormalSet("fimo", st, skipped, informal)


_NUMBER_RE = re.compile(r"^[\d\s+\-*/^().:ℝℕℤℚℂ]+$")


def split_equation(conclusion: str) -> tuple[str, str] | None:
    """``(lhs, rhs)`` when the conclusion is ONE top-level equation (no top-level ∧ ∨ → ↔, binder comma,
    quantifier or negation), else None."""
    text = conclusion.strip()
    if text[:1] in ("∀", "∃", "¬", "λ"):
        return None
    depth, eqs = 0, []
    for i, ch in enumerate(text):
        if ch in OPEN:
            depth += 1
        elif ch in CLOSE:
            depth -= 1
        elif depth == 0:
            if ch in "∧∨→↔," or text.startswith("\\/", i) or text.startswith("/\\", i):
                return None
            if ch == "=" and not (i > 0 and text[i - 1] in ":=<>!") and not text.startswith("==", i):
                eqs.append(i)
    if len(eqs) != 1:
        return None
    lhs, rhs = text[:eqs[0]].strip(), text[eqs[0] + 1:].strip()
    return (lhs, rhs) if lhs and rhs else None


def is_number_literal(text: str) -> bool:
    """A closed numeric literal: numerals combined by + - * / ^ with parentheses and type ascriptions."""
    return bool(_NUMBER_RE.match(text)) and any(c.isdigit() for c in text) and balanced(text)


def is_answer_style(stmt: FormalStatement) -> bool:
    """The conclusion is ``LHS = <numeric literal>``: the statement has a Hard-Mode form
    (:func:`morphlm.reason.hardmode.to_hard_mode`)."""
    eq = split_equation(stmt.conclusion)
    return eq is not None and is_number_literal(eq[1])


def statistics(fs: FormalSet) -> dict[str, Any]:
    """Counts by source, the answer-style (Hard-Mode) count by source, hypotheses per statement, skipped."""
    by_source = Counter(s.source for s in fs.statements)
    answer = Counter(s.source for s in fs.statements if is_answer_style(s))
    out: dict[str, Any] = {
        "set": fs.name, "statements": len(fs.statements), "skipped": len(fs.skipped),
        "by_source": dict(sorted(by_source.items())),
        "answer_style": sum(answer.values()), "answer_style_by_source": dict(sorted(answer.items())),
        "mean_hypotheses": (sum(len(s.hypotheses) for s in fs.statements) / len(fs.statements)
                            if fs.statements else 0.0),
    }
    if fs.informal:
        out["informal"] = len(fs.informal)
        out["formalized_with_informal"] = sum(1 for s in fs.statements if s.informal is not None)
    return out
