"""Labelled text and sentence-pair classification tasks (GLUE-style) from TSV, CSV or JSONL files.

Columns are found by name (case-insensitive) unless given explicitly:

    label  label, labels, y, class
    text   sentence1, text_a, question1, premise, sentence, text, content, question
    pair   sentence2, text_b, question2, hypothesis, passage

and a file with both ``question`` and ``sentence`` but no pair column is read as a QNLI-style pair
(question, sentence). Labels may be integers (used as they are) or strings (mapped to 0..K-1 in
sorted order; :func:`load_task` builds one mapping over train and val together).

Inputs follow BERT (Devlin et al. 2019, §3): ``<cls> a <sep>`` or ``<cls> a <sep> b <sep>``, with
segment ids 0 for the first part and 1 for the second, truncated longest-first to ``max_len``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .batches import derive_seed
from .corpora import CorpusError, read_text_file
from .tokenizer import Tokenizer

__all__ = ["Example", "Task", "TaskError", "load_task_file", "load_task", "ClassificationBatches"]

LABEL_COLUMNS = ("label", "labels", "y", "class")
TEXT_COLUMNS = ("sentence1", "text_a", "question1", "premise", "sentence", "text", "content", "question")
PAIR_COLUMNS = ("sentence2", "text_b", "question2", "hypothesis", "passage")


class TaskError(ValueError):
    """A task file could not be read or batched; the message says why and what to do."""


@dataclass
class Example:
    text: str
    text_pair: str | None
    label: int


@dataclass
class Task:
    train: list[Example]
    val: list[Example]
    label_names: list[str]
    n_classes: int
    is_pair: bool
    label_to_id: dict[str, int] = field(default_factory=dict)


# ---- reading ---------------------------------------------------------------------------------------


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for ext, fmt in ((".tsv", "tsv"), (".csv", "csv"), (".jsonl", "jsonl"), (".json", "json")):
        if name.endswith(ext):
            return fmt
    raise TaskError(f"{path}: unknown task file type; use .tsv, .csv, .jsonl or .json (optionally .gz), "
                    "with a header row naming the columns for .tsv/.csv.")


def _pick(columns: list[str], explicit: str | None, candidates: tuple[str, ...], what: str, path: Path,
          exclude: tuple[str, ...] = (), required: bool = True) -> str | None:
    lower = {c.lower().strip(): c for c in columns}
    if explicit is not None:
        if explicit in columns:
            return explicit
        if explicit.lower() in lower:
            return lower[explicit.lower()]
        raise TaskError(f"{path}: no column {explicit!r} for the {what}; the columns are {columns}. "
                        f"Pass an existing column as {what}_field.")
    for c in candidates:
        if c in lower and lower[c] not in exclude:
            return lower[c]
    if required:
        raise TaskError(f"{path}: cannot find the {what} column among {columns} (looked for "
                        f"{list(candidates)}). Pass {what}_field='<column name>'.")
    return None


def _choose_columns(columns: list[str], path: Path, text_field, pair_field, label_field):
    label_col = _pick(columns, label_field, LABEL_COLUMNS, "label", path)
    pair_col = _pick(columns, pair_field, PAIR_COLUMNS, "pair", path, exclude=(label_col,), required=False)
    text_col = _pick(columns, text_field, TEXT_COLUMNS, "text", path, exclude=(label_col, pair_col))
    lower = {c.lower(): c for c in columns}
    if (pair_col is None and pair_field is None and text_field is None
            and "question" in lower and "sentence" in lower):
        text_col, pair_col = lower["question"], lower["sentence"]  # QNLI layout
    return text_col, pair_col, label_col


def _rows_delimited(text: str, path: Path, delimiter: str, fields) -> list[tuple[int, str, str | None, object]]:
    # GLUE TSVs contain unbalanced quotes, so TSV is read without quote processing; CSV uses standard quoting.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, quoting=quoting)
    header = None
    rows = []
    for line_no, row in enumerate(reader, start=1):
        if not row or all(not c.strip() for c in row):
            continue
        if header is None:
            header = [c.strip() for c in row]
            text_col, pair_col, label_col = _choose_columns(header, path, *fields)
            ti, li = header.index(text_col), header.index(label_col)
            pi = header.index(pair_col) if pair_col is not None else None
            continue
        if len(row) != len(header):
            raise TaskError(f"{path}: line {line_no} has {len(row)} fields but the header has {len(header)} "
                            f"({header}). Fix that line (a stray {'tab' if delimiter == chr(9) else 'comma'} "
                            "or a missing field).")
        rows.append((line_no, row[ti], row[pi] if pi is not None else None, row[li].strip()))
    if header is None:
        raise TaskError(f"{path} is empty; a task file needs a header row and at least one example.")
    return rows


def _rows_json(text: str, path: Path, fmt: str, fields) -> list[tuple[int, str, str | None, object]]:
    objs: list[tuple[int, object]] = []
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise TaskError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); fix it or convert it to "
                            "JSONL (one object per line).") from None
        if not isinstance(data, list):
            raise TaskError(f"{path} must hold a JSON list of objects; convert it to JSONL (one object per line).")
        objs = [(i + 1, o) for i, o in enumerate(data)]
        where = "item"
    else:
        for line_no, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                objs.append((line_no, json.loads(line)))
            except json.JSONDecodeError as e:
                raise TaskError(f"{path}: line {line_no} is not valid JSON ({e.msg}); each line must be one "
                                "JSON object. Fix or remove that line.") from None
        where = "line"
    if not objs:
        raise TaskError(f"{path} has no examples.")
    rows = []
    cols = None
    for n, obj in objs:
        if not isinstance(obj, dict):
            raise TaskError(f"{path}: {where} {n} is a JSON {type(obj).__name__}, not an object; each example "
                            "must be an object such as {\"text\": ..., \"label\": ...}.")
        if cols is None:
            text_col, pair_col, label_col = cols = _choose_columns(list(obj), path, *fields)
        for col in (c for c in cols if c is not None):
            if col not in obj:
                raise TaskError(f"{path}: {where} {n} has no field {col!r} (it has {list(obj)}); add it or "
                                "remove the example.")
        t = obj[text_col]
        p = obj[pair_col] if pair_col is not None else None
        if not isinstance(t, str) or (pair_col is not None and not isinstance(p, str)):
            raise TaskError(f"{path}: {where} {n}: the text fields must be strings; fix that example.")
        rows.append((n, t, p, obj[label_col]))
    return rows


def _read_rows(path, text_field, pair_field, label_field):
    p = Path(path)
    fmt = _format_of(p)
    try:
        text = read_text_file(p, gutenberg=False)
    except CorpusError as e:
        raise TaskError(str(e)) from None
    fields = (text_field, pair_field, label_field)
    if fmt in ("tsv", "csv"):
        try:
            rows = _rows_delimited(text, p, "\t" if fmt == "tsv" else ",", fields)
        except csv.Error as exc:  # a NUL byte, a field over the size limit ...
            raise TaskError(f"{p} cannot be read as {fmt.upper()} ({exc}); is it a text file of examples? "
                            f"Fix or replace it.") from None
    else:
        rows = _rows_json(text, p, fmt, fields)
    if not rows:
        raise TaskError(f"{p} has a header but no examples; add examples or pick another file.")
    where = "item" if fmt == "json" else "line"
    for n, _, _, lab in rows:
        if lab is None or (isinstance(lab, str) and not lab.strip()):
            raise TaskError(f"{p}: {where} {n} has a blank label; every example needs one (a blank would become "
                            f"a class of its own) — fill it in or remove the example.")
        if not isinstance(lab, (str, int, float)) or (isinstance(lab, float) and not math.isfinite(lab)):
            raise TaskError(f"{p}: {where} {n} has the label {_short(lab)}; a label is a string or an integer — "
                            f"fix that example.")
    return p, rows


def _as_int_label(v) -> int | None:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and re.fullmatch(r"-?\d+", v.strip()):
        return int(v.strip())
    return None


# More classes than any classification task morphlm fine-tunes on: a label column beyond it is the wrong column
# (an id or a score) or a corrupted file, and would build a head of that many rows.
MAX_CLASSES = 10_000


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _label_mapping(raw_labels: list, where: str) -> tuple[dict, list[str], bool]:
    """(raw label -> id, label names, labels_are_ints)."""
    as_int = [_as_int_label(v) for v in raw_labels]
    if all(v is not None for v in as_int):
        neg = min(as_int)
        if neg < 0:
            raise TaskError(f"{where}: label {neg} is negative (unlabelled examples, as in GLUE test files?); "
                            "classification labels must be 0..K-1, so use a labelled split.")
        n = max(as_int) + 1
        if n > MAX_CLASSES:
            raise TaskError(f"{where}: label {max(as_int)} means {n} classes (labels are 0..K-1), more than the "
                            f"{MAX_CLASSES} a classifier here takes; is the label column the right one? Pass "
                            f"label_field, or renumber the labels 0..K-1.")
        return {}, [str(i) for i in range(n)], True
    names = sorted({str(v).strip() for v in raw_labels})
    if len(names) > MAX_CLASSES:
        raise TaskError(f"{where}: the label column has {len(names)} distinct values (e.g. "
                        f"{', '.join(_short(x, 40) for x in names[:3])}), more than the {MAX_CLASSES} classes a "
                        f"classifier here takes; is the label column the right one? Pass label_field.")
    return {name: i for i, name in enumerate(names)}, names, False


def _to_examples(path: Path, rows, mapping: dict, ints: bool) -> list[Example]:
    out = []
    for n, t, p, lab in rows:
        label = _as_int_label(lab) if ints else mapping.get(str(lab).strip())
        if label is None:
            raise TaskError(f"{path}: example at line/item {n} has label {lab!r}, which is not in the label "
                            f"set {sorted(mapping)}; fix the label.")
        out.append(Example(t, p, int(label)))
    return out


def load_task_file(path: str | os.PathLike, *, text_field: str | None = None, pair_field: str | None = None,
                   label_field: str | None = None) -> list[Example]:
    """Read one task file into examples. String labels are mapped to ints in sorted order within this
    file; use :func:`load_task` to map train and val consistently."""
    p, rows = _read_rows(path, text_field, pair_field, label_field)
    mapping, _, ints = _label_mapping([r[3] for r in rows], str(p))
    return _to_examples(p, rows, mapping, ints)


def load_task(train_path: str | os.PathLike, val_path: str | os.PathLike, **kw) -> Task:
    """Read a train and a val file with one shared label mapping. Keyword arguments go to the column
    detection (``text_field``, ``pair_field``, ``label_field``)."""
    allowed = {"text_field", "pair_field", "label_field"}
    unknown = set(kw) - allowed
    if unknown:
        raise TaskError(f"unknown argument(s) {sorted(unknown)} for load_task; use {sorted(allowed)}.")
    fields = (kw.get("text_field"), kw.get("pair_field"), kw.get("label_field"))
    tp, train_rows = _read_rows(train_path, *fields)
    vp, val_rows = _read_rows(val_path, *fields)
    train_pair = train_rows[0][2] is not None
    val_pair = val_rows[0][2] is not None
    if train_pair != val_pair:
        raise TaskError(f"{tp} is a {'pair' if train_pair else 'single-text'} task but {vp} is "
                        f"{'a pair' if val_pair else 'a single-text'} task; use files with the same columns "
                        "or name them with text_field/pair_field.")
    mapping, names, ints = _label_mapping([r[3] for r in train_rows + val_rows], f"{tp} + {vp}")
    train = _to_examples(tp, train_rows, mapping, ints)
    val = _to_examples(vp, val_rows, mapping, ints)
    return Task(train=train, val=val, label_names=names, n_classes=len(names), is_pair=train_pair,
                label_to_id=dict(mapping) if not ints else {n: i for i, n in enumerate(names)})


# ---- batching --------------------------------------------------------------------------------------


def _truncate_longest_first(la: int, lb: int, budget: int) -> tuple[int, int]:
    """Lengths after removing tokens one at a time from the longer part until la + lb <= budget."""
    if la + lb <= budget:
        return la, lb
    short = min(la, lb)
    new_short = min(short, budget // 2)
    new_long = budget - new_short
    return (new_long, new_short) if la >= lb else (new_short, new_long)


class ClassificationBatches:
    """Deterministic classification batches over a list of examples.

    ``train_batch(step)`` draws the examples at global positions ``step*B .. step*B + B - 1`` of an
    endless stream of epochs; epoch ``e`` is a permutation of the examples seeded by ``(seed, e)``, so
    batch ``step`` is a pure function of ``(seed, step)`` (epoch = step*B // N at the batch start).
    Sequences are padded to the longest one in the batch (``pad_to_max_len=True`` pads to ``max_len``).
    """

    def __init__(self, task_examples_train: list[Example], task_examples_val: list[Example], tokenizer: Tokenizer,
                 batch_size: int, max_len: int, seed: int = 0, *, pad_to_max_len: bool = False):
        if not task_examples_train:
            raise TaskError("no training examples; load a task file with at least one example.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise TaskError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
        is_pair = any(e.text_pair is not None for e in task_examples_train)
        min_len = 5 if is_pair else 3
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < min_len:
            raise TaskError(f"max_len must be an integer >= {min_len} (room for <cls>, <sep> and at least one "
                            f"token per text), got {max_len!r}; 128 is typical.")
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_len = max_len
        self.seed = int(seed)
        self.pad_to_max_len = pad_to_max_len
        self.is_pair = is_pair
        self.cls_id, self.sep_id, self.pad_id = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id
        self._train = self._encode(task_examples_train)
        self._val = self._encode(task_examples_val)
        self._perm_cache: dict[int, torch.Tensor] = {}

    def _encode(self, examples: list[Example]) -> list[tuple[list[int], list[int], int]]:
        if not examples:
            return []
        a_ids = self.tokenizer.encode_batch([e.text for e in examples])
        pairs = [e.text_pair for e in examples]
        b_ids = self.tokenizer.encode_batch([p if p is not None else "" for p in pairs])
        out = []
        for e, a, b, p in zip(examples, a_ids, b_ids, pairs, strict=True):
            input_ids, types = self._assemble(a, b if p is not None else None)
            out.append((input_ids, types, int(e.label)))
        return out

    def _assemble(self, a: list[int], b: list[int] | None) -> tuple[list[int], list[int]]:
        if b is None:
            la = min(len(a), self.max_len - 2)
            ids = [self.cls_id, *a[:la], self.sep_id]
            return ids, [0] * len(ids)
        la, lb = _truncate_longest_first(len(a), len(b), self.max_len - 3)
        first = [self.cls_id, *a[:la], self.sep_id]
        second = [*b[:lb], self.sep_id]
        return first + second, [0] * len(first) + [1] * len(second)

    @property
    def n_train(self) -> int:
        return len(self._train)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self._train) / self.batch_size)

    def _perm(self, epoch: int) -> torch.Tensor:
        perm = self._perm_cache.get(epoch)
        if perm is None:
            g = torch.Generator(device="cpu")
            g.manual_seed(derive_seed("cls-epoch", self.seed, epoch))
            perm = torch.randperm(len(self._train), generator=g)
            if len(self._perm_cache) > 4:
                self._perm_cache.clear()
            self._perm_cache[epoch] = perm
        return perm

    def _collate(self, items: list[tuple[list[int], list[int], int]]) -> dict:
        L = self.max_len if self.pad_to_max_len else max(len(ids) for ids, _, _ in items)
        B = len(items)
        input_ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        attention = torch.zeros((B, L), dtype=torch.long)
        types = torch.zeros((B, L), dtype=torch.long)
        for i, (ids, tt, _) in enumerate(items):
            n = len(ids)
            input_ids[i, :n] = torch.tensor(ids, dtype=torch.long)
            attention[i, :n] = 1
            types[i, :n] = torch.tensor(tt, dtype=torch.long)
        labels = torch.tensor([lab for _, _, lab in items], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": types, "labels": labels}

    def train_batch(self, step: int) -> dict:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise TaskError(f"step must be an integer >= 0, got {step!r}.")
        n = len(self._train)
        items = []
        for pos in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, k = divmod(pos, n)  # a batch may straddle two epochs
            items.append(self._train[int(self._perm(epoch)[k])])
        return self._collate(items)

    def val_batches(self) -> list[dict]:
        return [self._collate(self._val[i:i + self.batch_size]) for i in range(0, len(self._val), self.batch_size)]
