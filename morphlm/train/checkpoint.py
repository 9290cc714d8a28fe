"""Checkpoint directories: the currency between morphlm verbs (DESIGN.md).

    run/
      model.safetensors        weights of the unwrapped model (never pickle)
      config.json              ModelConfig + format_version + the integrity record: weights_sha256 (the
                               weights file's bytes), config_sha256 (this file's other entries) and
                               fingerprint (canonical hash of the model: config + tensors by sorted name)
      tokenizer.json           the tokenizer the weights were trained with
      state/optimizer.safetensors, state/trainer.json   enough to resume bit-exactly
      metrics.jsonl            appended by the training loop
      lineage.json             what produced this directory (parents carry their fingerprints)
      .lock                    the writer lock: present while a process writes the directory, holds its PID

One writer, any number of readers. A process that writes a directory holds its :class:`WriterLock`
(an ``fcntl.flock`` on ``run/.lock``, released by the kernel when the process dies); a second writer
fails at once with an error naming the holder's PID. Readers take no lock and never move or delete.

Crash safety: a save (under the lock) first writes every file into ``run/.staging/``, then atomically
writes ``.staging/COMMIT`` (temporary file + rename) listing them, then moves the files into place with
``os.replace`` and removes the staging folder. A kill at any moment leaves the previous checkpoint or
the new one — never a mix: readers see the committed state (a file listed in a COMMIT and still in
staging is read from there; an uncommitted staging folder is ignored), and the next writer rolls a
committed save forward (:func:`recover`) or discards an uncommitted one. COMMIT lists plain relative
names; an absolute name, ``..``, a separator outside ``state/`` or a symbolic link on the way is
refused with an error and nothing is touched, and checkpoint files that are symbolic links are refused,
so no directory can make morphlm read or write outside it.

Every reader raises :class:`CheckpointError`, naming the file and the field, for whatever a file holds.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import json
import math
import os
import re
import shutil
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..io import fsync_dir, json_text, short_repr
from ..io import write_atomic  # noqa: F401  (re-exported: loop.py and tests use ckpt.write_atomic)
from ..model.config import CHECKPOINT_ONLY_KEYS, FORMAT_VERSION, ConfigError, ModelConfig
from ..model.gmap import GMAPModel, check_memory_model
from ..model.moe import weights_kind_hint
from ..model.transformer import TransformerLM

STAGING = ".staging"
COMMIT = "COMMIT"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
LINEAGE_FILE = "lineage.json"
OPTIM_FILE = "state/optimizer.safetensors"
TRAINER_FILE = "state/trainer.json"
# optimizer state a verb hands to the first run trained from this directory (growth's carried AdamW moments);
# data for a fresh start, not resumable trainer state (has_trainer_state ignores it)
INITIAL_OPTIM_FILE = "state/initial_optimizer.safetensors"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".lock"
# config.json entries that record integrity rather than describe the model
INTEGRITY_KEYS = ("weights_sha256", "config_sha256", "fingerprint")

# Explicit upgrade functions: UPGRADES[v] turns a config dict of format v into format v+1.
# Format 1 is the first released format, so there is nothing to upgrade yet.
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}

# Quantized checkpoints (config.json carries a ``quantization`` block naming its ``method``) are built by
# the loader registered for that method: QUANTIZED_LOADERS[method](run_dir, device, verify) -> model.
# Higher layers register on import (morphlm.compress registers "ternary" and "int8_dynamic"); load_model
# imports the packages named in QUANTIZED_PROVIDERS on first need, so this module never imports them.
QUANTIZED_LOADERS: dict[str, Callable[..., Any]] = {}
QUANTIZED_PROVIDERS: tuple[str, ...] = ("morphlm.compress",)


class CheckpointError(RuntimeError):
    """A checkpoint directory that cannot be used; the message names the problem and the fix."""


class CheckpointLocked(CheckpointError):
    """Another process holds the directory's writer lock; ``pid`` names it (None if it could not be read)."""

    def __init__(self, message: str, pid: int | None) -> None:
        super().__init__(message)
        self.pid = pid


def _short(value: Any, limit: int = 300) -> str:
    """repr of a value from a file, cut to ``limit`` characters (a crafted file cannot flood a message)."""
    return short_repr(value, limit)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_json(data: bytes, path: Path, what: str) -> Any:
    """Decode a checkpoint JSON file; every failure is a CheckpointError naming the file."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path} is not UTF-8 text (byte {exc.start}); the {what} is corrupted — "
                              f"restore it or retrain") from exc
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, digit limits, absurd nesting
        raise CheckpointError(f"{path} is not valid JSON ({_short(str(exc), 200)}); the {what} is corrupted — "
                              f"restore it or retrain") from exc


# ---------------------------------------------------------------------------- low-level writes
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensors_to_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return st_save(clean, metadata=metadata)


def _read_safetensors(path: Path, what: str, data: bytes | None = None) -> dict[str, torch.Tensor]:
    try:
        return st_load(path.read_bytes() if data is None else data)
    except (SafetensorError, ValueError, OSError) as exc:
        raise CheckpointError(f"{what} {path} is unreadable ({_short(str(exc), 200)}); the file is truncated or "
                              f"corrupted — restore it from a backup or retrain") from exc


# bytes per element of the safetensors dtypes (sub-byte and unknown dtypes are not size-checked)
_ST_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                   "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


def parse_safetensors_header(head: bytes, file_size: int, where: str | Path) -> tuple[dict[str, dict], int]:
    """({tensor name: {dtype, shape, data_offsets}}, start of the data) from the first bytes of a
    safetensors file (``head`` holds at least the 8-byte length and the JSON header), validated against
    ``file_size`` — read without allocating a single tensor."""
    def bad(problem: str) -> CheckpointError:
        return CheckpointError(f"{where} is not a valid safetensors file ({problem}); the weights file is "
                               f"truncated or corrupted — restore it or retrain")

    if len(head) < 8:
        raise bad("shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", head[:8])
    if n > _MAX_HEADER or 8 + n > file_size or len(head) < 8 + n:
        raise bad(f"header length {n} does not fit the file's {file_size} bytes")
    try:
        header = json.loads(head[8:8 + n].decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise bad(f"its header is not JSON: {_short(str(exc), 120)}") from exc
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    data_len = file_size - 8 - n
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
              and isinstance(entry.get("shape"), list) and all(_is_int(d) and d >= 0 for d in entry["shape"])
              and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
              and all(_is_int(o) for o in entry["data_offsets"]))
        if not ok:
            raise bad(f"tensor {_short(name, 80)} has a malformed entry {_short(entry, 120)}")
        begin, end = entry["data_offsets"]
        if not 0 <= begin <= end <= data_len:
            raise bad(f"tensor {_short(name, 80)} lies outside the file (bytes {begin}..{end} of {data_len})")
        size = _ST_DTYPE_BYTES.get(entry["dtype"])
        if size is not None and math.prod(entry["shape"]) * size != end - begin:
            raise bad(f"tensor {_short(name, 80)} of shape {entry['shape']} {entry['dtype']} spans "
                      f"{end - begin} bytes")
        tensors[name] = entry
    return tensors, 8 + n


def _canonical_config(config: dict[str, Any]) -> bytes:
    """The model-describing entries of a config.json dict (no format number, no integrity record) as
    canonical JSON: sorted keys, no whitespace."""
    body = {k: v for k, v in config.items() if k not in ("format_version", *INTEGRITY_KEYS)}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")


def config_sha256(config: dict[str, Any]) -> str:
    """Integrity hash of config.json: every entry except the integrity record itself."""
    body = {k: v for k, v in config.items() if k not in INTEGRITY_KEYS}
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8"))


def weights_fingerprint(weights: bytes, config: dict[str, Any], where: str | Path = "model.safetensors") -> str:
    """Canonical fingerprint of a model: sha256 over its config (canonical JSON) and its tensors in sorted
    name order, each as name, dtype, shape and raw bytes. Unlike the file hash it does not depend on the
    order safetensors happened to lay the tensors out (which varies between processes), so bit-identical
    models get the same fingerprint in any process."""
    tensors, start = parse_safetensors_header(weights, len(weights), where)
    view = memoryview(weights)
    h = hashlib.sha256(b"morphlm-fingerprint-v1\0")
    h.update(_canonical_config(config))
    for name in sorted(tensors):
        entry = tensors[name]
        begin, end = entry["data_offsets"]
        h.update(b"\0" + json.dumps([name, entry["dtype"], entry["shape"]]).encode("utf-8") + b"\0")
        h.update(struct.pack("<Q", end - begin))
        h.update(view[start + begin:start + end])
    return "fp1:" + h.hexdigest()


# ---------------------------------------------------------------------------- writer lock
# real path of a directory -> [fd, depth, pid, whether acquiring created the folder], per lock this process holds
_HELD: dict[str, list] = {}


class WriterLock:
    """The writer lock of a checkpoint directory: ``fcntl.flock`` on ``run/.lock``, held from
    :meth:`acquire` to :meth:`release` (use it as a context manager). The kernel releases it when the
    process dies, so a killed run never leaves a stale lock. Re-entrant within a process (a training run
    holds it for the whole run; each save inside re-enters it). A second process fails at once with
    :class:`CheckpointLocked` naming the holder's PID. Creates the directory if needed."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._key: str | None = None

    def acquire(self) -> "WriterLock":
        run_dir = self.run_dir
        if run_dir.exists() and not run_dir.is_dir():
            raise CheckpointError(f"{run_dir} exists and is not a directory; a checkpoint is a folder — "
                                  f"choose another --out")
        created = not run_dir.exists()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"cannot create the checkpoint directory {run_dir} ({exc.strerror}); "
                                  f"choose a writable --out") from exc
        key = os.path.realpath(run_dir)
        held = _HELD.get(key)
        if held is not None and held[2] == os.getpid():
            held[1] += 1
            self._key = key
            return self
        path = run_dir / LOCK_FILE
        for _ in range(100):
            fd = self._open_and_lock(path)
            # the previous holder removes the file when it lets go: a lock taken on a file that is no
            # longer at ``path`` guards nothing, so take it again on the file that is there now
            here = _lstat(path)
            mine = os.fstat(fd)
            if here is not None and (here.st_ino, here.st_dev) == (mine.st_ino, mine.st_dev):
                break
            os.close(fd)
        else:
            raise CheckpointError(f"could not take the writer lock {path}: it kept being replaced")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = [fd, 1, os.getpid(), created]
        self._key = key
        return self

    def _open_and_lock(self, path: Path) -> int:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise CheckpointError(f"{path} is a symbolic link; a checkpoint's lock file must be a plain "
                                      f"file — remove the link") from exc
            raise CheckpointError(f"cannot write to {self.run_dir} ({exc.strerror}); a checkpoint directory must "
                                  f"be writable — fix its permissions or choose another --out") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid = _lock_holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CheckpointError(f"cannot lock {path} ({exc.strerror}); the file system may not support "
                                      f"locks — write the checkpoint to a local disk") from exc
            who = f"process {pid}" if pid is not None else "another process"
            raise CheckpointLocked(f"{self.run_dir} is being written by {who} (it holds {path}); two writers "
                                   f"would mix their checkpoints — wait for it to finish, stop it, or choose "
                                   f"another --out", pid) from exc
        return fd

    def release(self) -> None:
        if self._key is None:
            return
        key, self._key = self._key, None
        held = _HELD.get(key)
        if held is None or held[2] != os.getpid():
            return
        held[1] -= 1
        if held[1] == 0:
            del _HELD[key]
            try:  # removed while still held (see acquire), so a finished checkpoint holds no lock file
                os.unlink(Path(key) / LOCK_FILE)
                if held[3]:
                    os.rmdir(key)  # a run that failed before writing anything leaves no empty folder
            except OSError:
                pass
            fcntl.flock(held[0], fcntl.LOCK_UN)
            os.close(held[0])

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def writer_lock(run_dir: str | Path) -> WriterLock:
    """``with writer_lock(out): ...`` — hold ``out``'s writer lock for the block (see :class:`WriterLock`)."""
    return WriterLock(run_dir)


def holds_writer_lock(run_dir: str | Path) -> bool:
    held = _HELD.get(os.path.realpath(run_dir))
    return held is not None and held[2] == os.getpid()


def _lock_holder(fd: int) -> int | None:
    """The PID written in a lock file (the holder writes it right after locking: wait briefly for it)."""
    for _ in range(20):
        try:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            return None
        if text.isdigit():
            return int(text)
        time.sleep(0.01)
    return None


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """One safetensors file written atomically (side files of a checkpoint: prompts, initial optimizer state)."""
    path = Path(path)
    write_atomic(path, tensors_to_bytes(tensors, metadata))
    return path


def read_tensors(path: str | Path, what: str = "tensor file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; a clear CheckpointError when it is unreadable."""
    path = Path(path)
    tensors = _read_safetensors(path, what)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{what} {path} is unreadable ({exc}); restore it or recreate it") from exc
    return tensors, meta


# ---------------------------------------------------------------------------- staging / recovery
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}\Z")
_SUBDIRS = ("state",)  # the only folder a checkpoint file may live in
_MAX_COMMIT = 1 << 20


def _safe_rel(name: Any, where: Path) -> str:
    """A COMMIT entry, checked: a plain relative name (``model.safetensors``) or one under ``state/``."""
    def refuse(problem: str) -> CheckpointError:
        return CheckpointError(f"{where} lists {_short(name, 120)}, {problem}; a COMMIT may only name plain files "
                               f"of the checkpoint — this directory was altered or crafted, nothing was moved. "
                               f"Remove {where.parent} to discard that save")

    if not isinstance(name, str):
        raise refuse("which is not a file name")
    if name.startswith("/") or "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise refuse("an absolute path")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise refuse("a path that leaves the directory" if ".." in parts else "an empty or '.' path component")
    if len(parts) > 2 or (len(parts) == 2 and parts[0] not in _SUBDIRS):
        raise refuse(f"a path separator outside {', '.join(s + '/' for s in _SUBDIRS)}")
    if not all(_NAME.match(p) for p in parts) or name == COMMIT:
        raise refuse("not a plain file name (letters, digits, '_', '-', '.'; not hidden)")
    return name


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None


def _no_symlinks(run_dir: Path, rel: str, root: Path | None = None) -> None:
    """Refuse a checkpoint file ``root/rel`` (root defaults to run_dir) that is, or lies in, a symbolic link."""
    root = run_dir if root is None else root
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        path = root.joinpath(*parts[:i])
        st = _lstat(path)
        if st is None:
            return
        if stat.S_ISLNK(st.st_mode):
            raise CheckpointError(f"{path} is a symbolic link; checkpoint files must be plain files inside "
                                  f"{run_dir} (a link could make morphlm read or write elsewhere) — replace it "
                                  f"with the file itself")
        if i < len(parts) and not stat.S_ISDIR(st.st_mode):
            raise CheckpointError(f"{path} is not a folder; {run_dir} is damaged — restore it or retrain")


def _commit_state(run_dir: Path) -> tuple[list[str], tuple | None]:
    """(names listed in ``.staging/COMMIT``, identity of the marker) — ([], None) without a committed save.
    A crafted COMMIT (unsafe names, links) raises CheckpointError; nothing is touched."""
    stage = run_dir / STAGING
    st = _lstat(stage)
    if st is None:
        return [], None
    if not stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"{stage} is a symbolic link or a file, not the staging folder of a save; this "
                              f"directory was altered — remove {stage}")
    marker = stage / COMMIT
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return [], None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CheckpointError(f"{marker} is a symbolic link; this directory was altered — remove {stage}") from exc
        raise CheckpointError(f"cannot read {marker} ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as f:
        mst = os.fstat(f.fileno())
        data = f.read(_MAX_COMMIT + 1)
    if len(data) > _MAX_COMMIT:
        raise CheckpointError(f"{marker} is larger than {_MAX_COMMIT} bytes; this directory was altered — "
                              f"remove {stage}")
    doc = _parse_json(data, marker, "commit marker of an interrupted save")
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        raise CheckpointError(f"{marker} must hold {{\"files\": [names]}}, not {_short(doc, 120)}; this directory "
                              f"was altered — remove {stage}")
    names = [_safe_rel(name, marker) for name in doc["files"]]
    for name in names:
        _no_symlinks(run_dir, name, root=stage)
    return names, (mst.st_ino, mst.st_mtime_ns, mst.st_size)


def _roll_forward(run_dir: Path) -> None:
    """Finish a committed save or discard an uncommitted one. Only the writer-lock holder calls this."""
    stage = run_dir / STAGING
    names, sig = _commit_state(run_dir)  # validates every entry before anything moves
    if sig is not None:
        for rel in names:
            _no_symlinks(run_dir, rel)
            dst = run_dir / rel
            st = _lstat(dst)
            if st is not None and not stat.S_ISREG(st.st_mode):
                raise CheckpointError(f"{dst} is not a plain file; {run_dir} is damaged — restore it or retrain")
            st = _lstat(stage / rel)
            if st is not None and not stat.S_ISREG(st.st_mode):
                raise CheckpointError(f"{stage / rel} is not a plain file; this directory was altered — remove "
                                      f"{stage}")
        moved_dirs = {run_dir}
        for rel in names:
            src = stage / rel
            if _lstat(src) is None:  # already moved by an earlier, interrupted roll-forward
                continue
            dst = run_dir / rel
            if dst.parent != run_dir:
                dst.parent.mkdir(exist_ok=True)
                moved_dirs.add(dst.parent)
            os.replace(src, dst)
        for d in moved_dirs:
            fsync_dir(d)
    if _lstat(stage) is not None:
        try:
            shutil.rmtree(stage)
        except OSError as exc:
            raise CheckpointError(f"cannot remove the staging folder {stage} ({exc.strerror}); fix the "
                                  f"directory's permissions") from exc
        fsync_dir(run_dir)


def recover(run_dir: str | Path) -> None:
    """Finish or discard an interrupted save (see module docstring). A write: it takes the directory's
    writer lock (re-entrant), so it fails naming the PID while another process writes. Readers never
    call it — they read the committed state as it is."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or _lstat(run_dir / STAGING) is None:
        return
    with writer_lock(run_dir):
        _roll_forward(run_dir)


def _check_lineage_acyclic(run_dir: Path, lineage: dict[str, Any] | None) -> None:
    """Refuse a lineage whose parents (or their ancestors, via their lineage.json) include ``run_dir``."""
    if not lineage:
        return
    if not isinstance(lineage, dict) or not isinstance(lineage.get("parents", []), list):
        raise CheckpointError(f"the lineage to save in {run_dir} must be a mapping with a list of parents")
    target = os.path.realpath(run_dir)
    stack = [(p.get("path"), str(run_dir)) for p in lineage.get("parents", []) if isinstance(p, dict)]
    seen: set[str] = set()
    while stack:
        path, via = stack.pop()
        if not isinstance(path, str) or not path:
            continue
        real = os.path.realpath(path)
        if real == target:
            raise CheckpointError(f"{run_dir} cannot be its own ancestor: its lineage would list {path} (reached "
                                  f"from {via}) as a parent, a cycle that breaks every FLOPs count — write the "
                                  f"result to another --out")
        if real in seen or len(seen) > 10_000:
            continue
        seen.add(real)
        try:
            parent_lineage = read_lineage(path) if os.path.isdir(path) else None
        except CheckpointError:
            continue  # a damaged ancestor is reported by whoever reads it; it cannot lead back here
        for p in (parent_lineage or {}).get("parents", []):
            stack.append((p.get("path"), path))


def _with_parent_fingerprints(lineage: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``lineage`` whose parents that are checkpoint directories carry their canonical
    ``fingerprint`` (the process-independent identity; ``sha256`` stays the weights file hash)."""
    lineage = dict(lineage)
    parents = []
    for parent in lineage.get("parents", []) or []:
        if isinstance(parent, dict) and "fingerprint" not in parent and isinstance(parent.get("path"), str):
            try:
                if has_checkpoint(parent["path"]):
                    parent = {**parent, "fingerprint": _cached_fingerprint(Path(parent["path"]))}
            except (CheckpointError, OSError):
                pass  # a parent that cannot be read now keeps the record its verb made
        parents.append(parent)
    if "parents" in lineage:
        lineage["parents"] = parents
    return lineage


_FINGERPRINTS: dict[tuple, str] = {}


def _cached_fingerprint(run_dir: Path) -> str:
    """model_fingerprint, remembered per (directory, config.json and weights file state): a run saving
    every few steps does not re-hash its --init parent's weights each time."""
    key = tuple([os.path.realpath(run_dir)] + [(st.st_ino, st.st_mtime_ns, st.st_size) if st else None
                                               for st in (_lstat(run_dir / CONFIG_FILE), _lstat(run_dir / MODEL_FILE))])
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = model_fingerprint(run_dir)
    return _FINGERPRINTS[key]


def save_checkpoint(
    run_dir: str | Path,
    model_state: dict[str, torch.Tensor],
    cfg: ModelConfig,
    *,
    tokenizer_json: str | None = None,
    optimizer_tensors: dict[str, torch.Tensor] | None = None,
    trainer_state: dict[str, Any] | None = None,
    lineage: dict[str, Any] | None = None,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically under its writer lock (taken here if the caller does not
    hold it already). ``model_state`` must be the unwrapped model's.
    ``extra_config``: extra top-level entries of config.json (a packed model's ``quantization`` block)."""
    run_dir = Path(run_dir)
    with writer_lock(run_dir):
        _check_lineage_acyclic(run_dir, lineage)
        _roll_forward(run_dir)
        stage = run_dir / STAGING
        stage.mkdir()
        files: list[str] = []

        def put(rel: str, data: bytes | str) -> None:
            write_atomic(stage / rel, data)
            files.append(rel)

        weights = tensors_to_bytes(model_state,
                                   metadata={"format": "pt", "morphlm_format_version": str(FORMAT_VERSION)})
        weights_sha = sha256_bytes(weights)
        config = json.loads(cfg.to_json())
        config.update(extra_config or {})
        config["fingerprint"] = weights_fingerprint(weights, config)
        config["weights_sha256"] = weights_sha
        config["config_sha256"] = config_sha256(config)
        put(MODEL_FILE, weights)
        del weights
        if tokenizer_json is not None:
            put(TOKENIZER_FILE, tokenizer_json)
        if lineage is not None:
            put(LINEAGE_FILE, json_text(_with_parent_fingerprints(lineage), allow_nan=True, default=str))
        if optimizer_tensors is not None or trainer_state is not None:
            trainer_state = dict(trainer_state or {})
            trainer_state["weights_sha256"] = weights_sha
            if optimizer_tensors is not None:
                optim = tensors_to_bytes(optimizer_tensors)
                trainer_state["optimizer_sha256"] = sha256_bytes(optim)
                put(OPTIM_FILE, optim)
            put(TRAINER_FILE, json_text(trainer_state, allow_nan=True))
        put(CONFIG_FILE, json_text(config, allow_nan=True))
        write_atomic(stage / COMMIT, json.dumps({"files": files}))
        _roll_forward(run_dir)
    return run_dir


# ---------------------------------------------------------------------------- reading
# Largest sizes morphlm writes for its JSON files, with a wide margin: a bigger file is refused unread.
_JSON_LIMIT = 256 * 1024 * 1024
_READ_RETRIES = 50


def _read_plain(path: Path, what: str, limit: int | None = None) -> bytes | None:
    """Bytes of a regular file (None if missing); links, folders, FIFOs and oversized files are refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CheckpointError(f"{path} is a symbolic link; checkpoint files must be plain files (a link could "
                                  f"make morphlm read or write elsewhere) — replace it with the file itself") from exc
        raise CheckpointError(f"cannot read the {what} {path} ({exc.strerror}); check its permissions") from exc
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"{path} is not a plain file; the {what} must be a regular file — restore it")
        if limit is not None and st.st_size > limit:
            raise CheckpointError(f"{path} is {st.st_size} bytes, far larger than any {what} morphlm writes; "
                                  f"the file is corrupted or not a morphlm file — restore it")
        try:
            return f.read()
        except OSError as exc:
            raise CheckpointError(f"cannot read the {what} {path} ({exc.strerror})") from exc


def _read_committed(run_dir: Path, rel: str, what: str, limit: int | None = None) -> bytes | None:
    """Bytes of checkpoint file ``rel`` in its last committed state, without moving anything: a file listed
    in ``.staging/COMMIT`` that is still in staging is read from there (its save is committed but not yet
    rolled forward), anything else from the directory itself. None if the file does not exist."""
    _no_symlinks(run_dir, rel)
    for _ in range(_READ_RETRIES):
        names, sig = _commit_state(run_dir)
        if sig is not None and rel in names:
            data = _read_plain(run_dir / STAGING / rel, what, limit)
            if data is not None:
                if _commit_state(run_dir)[1] == sig:
                    return data
                continue  # that save finished (and maybe another began) while we read: read again
        data = _read_plain(run_dir / rel, what, limit)
        if data is not None or sig is None or rel not in names or _commit_state(run_dir)[1] == sig:
            return data
        time.sleep(0.01)
    raise CheckpointError(f"{run_dir / rel} kept changing while being read: another process is saving {run_dir} "
                          f"very often — read it again when that run is done")


def _exists(run_dir: Path, rel: str) -> bool:
    names, sig = _commit_state(run_dir)
    if sig is not None and rel in names and _lstat(run_dir / STAGING / rel) is not None:
        return True
    return _lstat(run_dir / rel) is not None


def has_checkpoint(run_dir: str | Path) -> bool:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    return _exists(run_dir, CONFIG_FILE) and _exists(run_dir, MODEL_FILE)


def check_derived_dirs(src_dir: Path, out_dir: Path, *, role: str, verb: str,
                       error: type[Exception] = CheckpointError, float_only: str | None = None) -> None:
    """The checks of every verb that reads one checkpoint directory and writes a new one (grow, extract):
    the ``role`` directory (source, teacher) exists, is not a quantized model when the verb needs full-precision
    weights (``float_only``: what the verb does with them), and ``out_dir`` may be written by the verb ``verb``
    (its lineage verb; :func:`claim_output_dir`: new or empty, not the input); with ``float_only``, a looped
    (LoopMoE) source is refused too. Raises ``error`` naming the problem and the fix."""
    if not src_dir.is_dir():
        raise error(f"{role} checkpoint directory {src_dir} does not exist; pass a directory written by "
                    f"`morphlm train --out DIR`")
    claim_output_dir(out_dir, verb, inputs=[(role, src_dir)], error=error)
    if float_only is not None:
        record = read_record(src_dir, role=role, error=error)
        quant = record.quantization
        if quant is not None:
            raise error(f"{src_dir} is a quantized model ({quant.get('method')}); {float_only} — use the float "
                        f"checkpoint it was quantized from")
        if record.config.loop_repeats is not None:  # LoopMoE (model/loop.py): blocks run R times, IterAdaLN
            raise error(f"{src_dir} is a looped model (LoopMoE, loop_repeats={record.config.loop_repeats}); "
                        f"{verb} maps the weights of plain blocks one to one and knows neither the loop nor "
                        f"IterAdaLN's modulation — {verb} an unlooped checkpoint")


def has_trainer_state(run_dir: str | Path) -> bool:
    return has_checkpoint(run_dir) and _exists(Path(run_dir), TRAINER_FILE)


def _load_config(run_dir: Path) -> tuple[ModelConfig, dict[str, Any], bytes]:
    """(ModelConfig, raw dict, the file's bytes) of config.json in its committed state, fully checked."""
    if not run_dir.exists():
        raise CheckpointError(f"checkpoint directory {run_dir} does not exist; check the path "
                              f"(a run writes one with `morphlm train --out DIR`)")
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is a file, not a checkpoint directory; pass the folder a run wrote")
    path = run_dir / CONFIG_FILE
    data = _read_committed(run_dir, CONFIG_FILE, "model configuration", limit=16 * 1024 * 1024)
    if data is None:
        raise CheckpointError(f"{run_dir} is not a morphlm checkpoint: {CONFIG_FILE} is missing")
    raw = _parse_json(data, path, "model configuration")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} must hold a JSON object of ModelConfig fields, not {_short(raw, 100)}")
    version = raw.get("format_version", 1)
    if not _is_int(version):
        raise CheckpointError(f"{path}: format_version={_short(version, 60)} must be an integer (this morphlm "
                              f"writes {FORMAT_VERSION}); the file was altered — restore it")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{run_dir} was written with checkpoint format {version}, newer than this morphlm reads "
            f"(format {FORMAT_VERSION}); upgrade morphlm to load it")
    for key in INTEGRITY_KEYS:
        if key in raw and not isinstance(raw[key], str):
            raise CheckpointError(f"{path}: {key}={_short(raw[key], 80)} must be a string (a hash); the file "
                                  f"was altered — restore it")
    recorded = raw.get("config_sha256")
    if recorded is not None and recorded != config_sha256(raw):
        raise CheckpointError(f"{path} does not match the integrity hash recorded at save time (config_sha256 "
                              f"{recorded[:12]}…): the file was altered. Restore it from a backup or retrain; if you "
                              f"changed it on purpose, delete its config_sha256 entry to accept it")
    while version < FORMAT_VERSION:
        if version not in UPGRADES:
            raise CheckpointError(f"{run_dir} has checkpoint format {version} and no upgrade path to "
                                  f"{FORMAT_VERSION} exists; re-export it with an older morphlm")
        raw = UPGRADES[version](raw)
        version += 1
    if "quantization" in raw:
        block = raw["quantization"]
        if not isinstance(block, dict) or not isinstance(block.get("method"), str):
            raise CheckpointError(f"{path}: quantization={_short(block, 120)} must be an object naming its "
                                  f"\"method\"; the file was altered — restore it")
    fields = {k: v for k, v in raw.items() if k not in CHECKPOINT_ONLY_KEYS}
    try:
        cfg = ModelConfig.from_dict(fields)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {_short(str(exc), 600)[1:-1]}") from exc
    return cfg, raw, data


def read_config(run_dir: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """(ModelConfig, raw dict with format_version and the integrity record), strictly checked."""
    cfg, raw, _ = _load_config(Path(run_dir))
    return cfg, raw


def _estimate_bytes(cfg: ModelConfig) -> int:
    """float32 bytes of the model ``cfg`` describes (parameters and position tables), from its sizes alone."""
    d, dff, kv = cfg.d_model, cfg.d_ff or 0, cfg.kv_dim
    per_block = d * (d + 2 * kv) + d * d + d * dff * (2 if cfg.activation == "swiglu" else 1) + dff * d
    n = cfg.vocab_size * d + cfg.n_layers * per_block + cfg.n_segments * d
    n += cfg.max_seq_len * d * (1 if cfg.position == "learned" else 2 if cfg.position == "rope" else 0)
    if cfg.head in ("lm", "mlm") and not cfg.tie_embeddings:
        n += cfg.vocab_size * d
    if cfg.head == "cls":
        n += cfg.n_classes * d + d * d
    if cfg.moe_experts:  # routed layers: router, shared and routed experts (a pool's once) instead of the FFN
        e_ff, n_moe = cfg.expert_d_ff, len(cfg.moe_layer_ids)
        expert = d * e_ff * (2 if cfg.activation == "swiglu" else 1) + e_ff * d
        routed = cfg.moe_pool_groups * cfg.pool_size if cfg.moe_pool else n_moe * cfg.moe_experts
        n += n_moe * (d * cfg.router_experts + cfg.moe_shared_experts * expert - (per_block - d * (d + 2 * kv) - d * d))
        n += routed * expert
    return 4 * n


@functools.lru_cache(maxsize=16)
def _expected_shapes(cfg_json: str) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of the model a config describes, from a model built on the meta device (nothing is
    allocated); cached, as building one costs tens of milliseconds."""
    with torch.device("meta"):
        model = TransformerLM(ModelConfig.from_dict(json.loads(cfg_json)))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _check_sizes(run_dir: Path, cfg: ModelConfig, header: dict[str, dict], file_size: int, quantized: bool) -> None:
    """config.json against the weights' safetensors header, before any tensor or model is allocated."""
    blocks = set()
    for name in header:
        m = re.match(r"blocks\.(\d{1,9})\.", name)
        if m:
            blocks.add(int(m.group(1)))
    if blocks != set(range(cfg.n_layers)):
        raise CheckpointError(f"{run_dir / CONFIG_FILE} says n_layers={cfg.n_layers} but {MODEL_FILE} holds "
                              f"{len(blocks)} blocks; config and weights do not belong together — restore the "
                              f"config.json saved with these weights")
    need = _estimate_bytes(cfg)
    if need > 32 * file_size + (64 << 20):
        raise CheckpointError(f"{run_dir / CONFIG_FILE} describes a model of about {need / 2**30:.3g} GiB but "
                              f"{MODEL_FILE} holds {file_size / 2**20:.3g} MiB; a size in config.json (vocab_size, "
                              f"d_model, d_ff, max_seq_len, n_segments) is wrong — restore the config.json saved "
                              f"with these weights")
    expected = _expected_shapes(cfg.to_json())
    if not quantized:
        missing = sorted(set(expected) - set(header))
        unexpected = sorted(set(header) - set(expected))
        if missing or unexpected:
            raise CheckpointError(f"{run_dir}: weights do not fit config.json (missing {missing[:5]}, "
                                  f"unexpected {_short(unexpected[:5], 200)}); the config and weights come from "
                                  f"different runs{weights_kind_hint(missing, unexpected)}")
    for name in sorted(set(expected) & set(header)):
        if tuple(header[name]["shape"]) != expected[name]:
            raise CheckpointError(f"{run_dir}: tensor {name} has shape {tuple(header[name]['shape'])} but "
                                  f"config.json implies {expected[name]}; config and weights do not match")


def load_state_dict(run_dir: str | Path, verify: bool = True,
                    allow_quantized: bool = False) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    run_dir = Path(run_dir)
    path = run_dir / MODEL_FILE
    for _ in range(_READ_RETRIES):
        cfg, raw, cfg_bytes = _load_config(run_dir)
        if raw.get("quantization") and not allow_quantized:
            method = raw["quantization"].get("method")
            raise CheckpointError(f"{run_dir} holds a quantized ({_short(method, 60)}) model whose weights are not "
                                  f"float tensors; it can be evaluated or served (load_model), but not used as "
                                  f"--init, resumed or grown — use the full-precision checkpoint it was made from")
        data = _read_committed(run_dir, MODEL_FILE, "weights file")
        if data is None:
            raise CheckpointError(f"{run_dir} has no {MODEL_FILE}; the checkpoint is incomplete — retrain or restore it")
        expected = raw.get("weights_sha256")
        if verify and expected and sha256_bytes(data) != expected:
            if _read_committed(run_dir, CONFIG_FILE, "model configuration") != cfg_bytes:
                continue  # a writer committed a newer save between the two reads: read both again
            raise CheckpointError(
                f"{path} does not match the integrity hash recorded at save time (sha256 {expected[:12]}…): "
                f"the file was truncated or altered. Restore it from a backup or retrain; "
                f"pass verify=False only if you changed it on purpose")
        header, _ = parse_safetensors_header(data, len(data), path)
        _check_sizes(run_dir, cfg, header, len(data), quantized=bool(raw.get("quantization")))
        try:
            state = st_load(data)
        except (SafetensorError, ValueError) as exc:
            raise CheckpointError(f"{path} is unreadable ({_short(str(exc), 200)}); the weights file is corrupted "
                                  f"— restore or retrain") from exc
        return state, cfg
    raise CheckpointError(f"{run_dir} kept changing while being read: another process is saving it very often — "
                          f"read it again when that run is done")


def load_model(run_dir: str | Path, device: str | torch.device = "cpu", verify: bool = True) -> TransformerLM:
    """Build the model of a checkpoint directory and load its verified weights (a quantized directory is
    built by its method's registered loader, see QUANTIZED_LOADERS). Sizes are checked against the
    weights' header before the model is allocated."""
    _, raw = read_config(run_dir)
    if raw.get("quantization"):
        return _load_quantized(Path(run_dir), raw["quantization"], device, verify)
    state, cfg = load_state_dict(run_dir, verify=verify)
    if cfg.gmap_layer_ids:  # a G-MAP domain model: re-open its frozen parent (refused when missing or altered)
        return load_gmap(run_dir, cfg, state, device)
    model = TransformerLM(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{run_dir}: weights do not fit config.json (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}); the config and weights come from different runs"
                              f"{weights_kind_hint(missing, unexpected)}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{run_dir}: tensor {name} has shape {tuple(tensor.shape)} but config.json "
                                  f"implies {tuple(expected[name].shape)}; config and weights do not match")
    model.load_state_dict(state)
    return model.to(device)


# ---------------------------------------------------------------------------- G-MAP: the frozen parent
# A G-MAP checkpoint (model/gmap.py, train/gmap.py) holds the domain model only; its lineage records the frozen
# general model as a parent with role "gmap_memory" and its weights hash, and load_model re-opens that parent.
GMAP_ROLE = "gmap_memory"


@dataclass(frozen=True)
class MemoryRef:
    """The frozen general model of a G-MAP run: its resolved directory and weights hash."""

    path: Path
    sha256: str


def recorded_memory(run_dir: str | Path) -> MemoryRef | None:
    """The frozen parent a G-MAP checkpoint's lineage.json records (None when it records none)."""
    for parent in (read_lineage(run_dir) or {}).get("parents", []):
        if parent.get("role") == GMAP_ROLE and isinstance(parent.get("path"), str):
            return MemoryRef(Path(parent["path"]), str(parent.get("sha256", "")))
    return None


def check_gmap_memory(ref: MemoryRef, owner: str | Path) -> None:
    """Refuse a recorded frozen parent that is missing or whose weights are not the recorded ones."""
    if not has_checkpoint(ref.path):
        raise CheckpointError(
            f"the frozen general model of G-MAP checkpoint {owner} is missing: {ref.path} (recorded in its "
            f"{LINEAGE_FILE}) holds no checkpoint. A G-MAP checkpoint does not copy the frozen model's weights; "
            f"restore that directory (sha256 {ref.sha256[:12]}…) at that path")
    found = dir_fingerprint(ref.path)
    if found != ref.sha256:
        raise CheckpointError(
            f"the frozen general model of G-MAP checkpoint {owner} was altered: {ref.path} has weights sha256 "
            f"{found[:12]}… but {LINEAGE_FILE} records {ref.sha256[:12]}…. The domain model was trained "
            f"against the recorded weights; restore them at that path")


def load_gmap(run_dir: str | Path, cfg: ModelConfig, state: dict[str, torch.Tensor],
              device: str | torch.device = "cpu") -> GMAPModel:
    """A G-MAP checkpoint's model: its recorded frozen parent re-opened (refused when missing or altered), the
    domain model built on it and loaded with ``state``."""
    ref = recorded_memory(run_dir)
    if ref is None:
        raise CheckpointError(
            f"{run_dir} holds a G-MAP model (gmap_layers={cfg.gmap_layers!r}) but its {LINEAGE_FILE} records no "
            f"frozen general model (a parent with role {GMAP_ROLE!r}); restore the lineage.json saved with it")
    check_gmap_memory(ref, run_dir)
    general = load_model(ref.path).eval()
    try:
        check_memory_model(cfg, general.config, where=f"the frozen general model {ref.path}")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    model = GMAPModel(cfg, general)
    model.load_state_dict(state)
    return model.to(device)


def _load_quantized(run_dir: Path, block: Any, device: str | torch.device, verify: bool):
    method = block.get("method") if isinstance(block, dict) else None
    if method not in QUANTIZED_LOADERS:
        import importlib

        for provider in QUANTIZED_PROVIDERS:  # plugin lookup by name: registers the loaders it provides
            importlib.import_module(provider)
    if method not in QUANTIZED_LOADERS:
        raise CheckpointError(f"{run_dir}/config.json declares quantization method {_short(method, 60)}, which no "
                              f"installed loader reads (known: {sorted(QUANTIZED_LOADERS)}); upgrade morphlm or "
                              f"re-export it")
    return QUANTIZED_LOADERS[method](run_dir, device=device, verify=verify)


def dir_bytes(run_dir: str | Path) -> int:
    """Bytes on disk of the servable files of a checkpoint directory (weights, config, tokenizer,
    lineage): everything except resume state (state/), logs (metrics.jsonl, tensorboard/), staging and
    the lock file."""
    run_dir = Path(run_dir)
    skip = {"state", STAGING, "tensorboard", METRICS_FILE, LOCK_FILE}
    total = 0
    for path in run_dir.rglob("*"):
        rel = path.relative_to(run_dir)
        if rel.parts[0] in skip or path.is_symlink() or not path.is_file():
            continue
        total += path.stat().st_size
    return total


SHIPPED_FILES = (MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE)


def shipped_bytes(run_dir: str | Path) -> int:
    """Bytes of the model artifact a user would ship: the weights file (float, or the packed/int8 codes of a
    quantized directory), config.json and tokenizer.json — no nested stage folders, optimizer state, logs or
    lineage. This is ``morphlm eval``'s ``bytes_on_disk``."""
    run_dir = Path(run_dir)
    return sum((run_dir / f).stat().st_size for f in SHIPPED_FILES
               if (run_dir / f).is_file() and not (run_dir / f).is_symlink())


def total_bytes(run_dir: str | Path) -> int:
    """Bytes of every plain file under ``run_dir`` (nested stage folders, state/, logs included): what the
    directory occupies, reported beside :func:`shipped_bytes` as ``dir_bytes``."""
    return sum(p.stat().st_size for p in Path(run_dir).rglob("*") if p.is_file() and not p.is_symlink())


def load_tokenizer_json(run_dir: str | Path) -> str | None:
    """tokenizer.json's text (None if the directory has none), checked to be UTF-8 JSON."""
    run_dir = Path(run_dir)
    data = _read_committed(run_dir, TOKENIZER_FILE, "tokenizer", limit=_JSON_LIMIT)
    if data is None:
        return None
    doc = _parse_json(data, run_dir / TOKENIZER_FILE, "tokenizer")
    if not isinstance(doc, dict):
        raise CheckpointError(f"{run_dir / TOKENIZER_FILE} must hold a JSON object (a tokenizers file), not "
                              f"{_short(doc, 100)}; restore it")
    return data.decode("utf-8")


def _is_groups(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in value)


# trainer.json entries -> (check, what they must be); entries not listed are free-form
_TRAINER_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "step": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "tokens": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "flops": (lambda v: _is_number(v) and v >= 0, "a finite non-negative number"),
    "schedule_steps": (lambda v: v is None or (_is_int(v) and v > 0), "a positive integer or null"),
    "world_size": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "param_groups": (_is_groups, "a list of optimizer groups (objects with a \"params\" list)"),
    "aux_param_groups": (_is_groups, "a list of optimizer groups (objects with a \"params\" list)"),
    "args": (lambda v: isinstance(v, dict), "an object"),
    "data_cursor": (lambda v: isinstance(v, dict), "an object"),
    "data_spec": (lambda v: isinstance(v, dict), "an object"),
    "weights_sha256": (lambda v: isinstance(v, str), "a string (a hash)"),
    "optimizer_sha256": (lambda v: isinstance(v, str), "a string (a hash)"),
    "data_fingerprint": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "tokenizer_fingerprint": (lambda v: v is None or isinstance(v, str), "a string or null"),
}


def _read_trainer(run_dir: Path) -> tuple[dict[str, Any] | None, bytes | None]:
    path = run_dir / TRAINER_FILE
    data = _read_committed(run_dir, TRAINER_FILE, "resume state", limit=_JSON_LIMIT)
    if data is None:
        return None, None
    doc = _parse_json(data, path, "resume state")
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path} must hold a JSON object, not {_short(doc, 100)}; the resume state is "
                              f"corrupted — restore it or start a new run")
    for key, (check, want) in _TRAINER_FIELDS.items():
        if key in doc and not check(doc[key]):
            raise CheckpointError(f"{path}: {key}={_short(doc[key], 200)} must be {want}; the resume state is "
                                  f"corrupted — restore it or start a new run")
    return doc, data


def read_trainer_json(run_dir: str | Path) -> dict[str, Any] | None:
    """state/trainer.json (None if absent), with the types of every entry the loop reads checked."""
    return _read_trainer(Path(run_dir))[0]


def _check_optimizer_names(tensors: dict[str, torch.Tensor], path: Path) -> None:
    for name in tensors:
        parts = name.split("::")
        ok = (name == "rng.cpu" or not name.startswith(("state::", "aux.state::", "aux.param::"))
              or (parts[0] in ("state", "aux.state") and len(parts) == 3)
              or (parts[0] == "aux.param" and len(parts) == 2))
        if ok and parts[0] == "aux.state":
            ok = parts[1].isdigit()
        if not ok:
            raise CheckpointError(f"{path}: tensor name {_short(name, 120)} is not one the loop writes; the "
                                  f"optimizer state is corrupted — restore it or start a new run")


def load_trainer_state(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(trainer.json dict, optimizer tensors), checked against the weights they were saved with. The dict
    has ``step``, ``tokens`` and ``flops`` (required: a run resumes from them)."""
    run_dir = Path(run_dir)
    tpath = run_dir / TRAINER_FILE
    for _ in range(_READ_RETRIES):
        state, tbytes = _read_trainer(run_dir)
        if state is None:
            raise CheckpointError(f"{run_dir} has no {TRAINER_FILE}; it holds weights only and cannot be resumed "
                                  f"— start a new run from it instead")
        for key in ("step", "tokens", "flops"):
            if key not in state:
                raise CheckpointError(f"{tpath} has no {key!r} entry; the resume state is incomplete — restore it "
                                      f"or start a new run")
        weights = _read_committed(run_dir, MODEL_FILE, "weights file")
        if weights is None:
            raise CheckpointError(f"{run_dir} has no {MODEL_FILE}; the checkpoint is incomplete — restore it")
        opath = run_dir / OPTIM_FILE
        optim_bytes = _read_committed(run_dir, OPTIM_FILE, "optimizer state")
        stale = state.get("weights_sha256") not in (None, sha256_bytes(weights)) or (
            optim_bytes is not None and state.get("optimizer_sha256") not in (None, sha256_bytes(optim_bytes)))
        if stale and _read_trainer(run_dir)[1] != tbytes:
            continue  # a writer committed a newer save between the reads: read again
        if state.get("weights_sha256") not in (None, sha256_bytes(weights)):
            raise CheckpointError(f"{run_dir}: {MODEL_FILE} does not belong to {TRAINER_FILE} (hash mismatch); "
                                  f"the weights were replaced or altered — restore them or start a new run")
        optim: dict[str, torch.Tensor] = {}
        if optim_bytes is not None:
            if state.get("optimizer_sha256") not in (None, sha256_bytes(optim_bytes)):
                raise CheckpointError(f"{opath} does not match the hash in {TRAINER_FILE}: the optimizer state "
                                      f"was truncated or altered; restore it or start a new run")
            parse_safetensors_header(optim_bytes, len(optim_bytes), opath)
            optim = _read_safetensors(opath, "optimizer state", optim_bytes)
            _check_optimizer_names(optim, opath)
        return state, optim
    raise CheckpointError(f"{run_dir} kept changing while being read: another process is saving it very often")


def _metrics_lines(path: Path, data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) of each complete metrics line; a line cut off by a kill (not JSON) is skipped."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path} is not UTF-8 text (byte {exc.start}); the metrics log is corrupted — "
                              f"delete or restore it") from exc
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            continue  # a line cut off by a kill
        if not isinstance(rec, dict):
            raise CheckpointError(f"{path} line {i} is {_short(rec, 100)}, not a JSON object of metrics; "
                                  f"delete that line")
        step = rec.get("step")
        if step is not None and not (_is_int(step) and step >= 0):
            raise CheckpointError(f"{path} line {i}: step={_short(step, 100)} must be a non-negative integer; "
                                  f"fix or delete that line")
        out.append((line, rec))
    return out


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl ([] if absent); malformed records raise CheckpointError naming the line."""
    run_dir = Path(run_dir)
    data = _read_committed(run_dir, METRICS_FILE, "metrics log")
    return [] if data is None else [rec for _, rec in _metrics_lines(run_dir / METRICS_FILE, data)]


def trim_metrics(path: str | Path, resume_step: int) -> None:
    """Writer side of a resume: drop the records a run killed between checkpoints logged after its last
    save (step > ``resume_step``) and the line a kill cut off, atomically."""
    path = Path(path)
    _no_symlinks(path.parent, path.name)
    data = _read_plain(path, "metrics log")
    if data is None:
        return
    keep = [line for line, rec in _metrics_lines(path, data) if rec.get("step", 0) <= resume_step]
    write_atomic(path, "".join(f"{line}\n" for line in keep))


def open_append(path: str | Path) -> TextIO:
    """Open a checkpoint log (metrics.jsonl) for appending; a symbolic link or non-file is refused, so a
    crafted directory cannot make the loop write outside it."""
    path = Path(path)
    _no_symlinks(path.parent, path.name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CheckpointError(f"{path} is a symbolic link; checkpoint files must be plain files — replace it "
                                  f"with the file itself") from exc
        raise CheckpointError(f"cannot write {path} ({exc.strerror}); check the directory's permissions") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CheckpointError(f"{path} is not a plain file; remove it")
    return os.fdopen(fd, "a", encoding="utf-8")


def write_initial_optimizer_state(run_dir: str | Path, tensors: dict[str, torch.Tensor], param_groups: list) -> Path:
    """Flattened name-keyed optimizer state (the loop's ``state::FQN::KEY`` tensors + param groups) for the first
    run trained from ``run_dir`` (see INITIAL_OPTIM_FILE)."""
    return write_tensors(Path(run_dir) / INITIAL_OPTIM_FILE, tensors, {"param_groups": json.dumps(param_groups)})


def read_initial_optimizer_state(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], list] | None:
    """(tensors, param groups) written by :func:`write_initial_optimizer_state`, or None when there is none."""
    path = Path(run_dir) / INITIAL_OPTIM_FILE
    if not path.exists():
        return None
    tensors, meta = read_tensors(path, "initial optimizer state")
    return tensors, json.loads(meta.get("param_groups", "[]"))


def read_lineage(run_dir: str | Path) -> dict[str, Any] | None:
    """lineage.json (None if absent), with its structure checked: an object whose ``parents`` is a list
    of objects, paths are strings and FLOPs counts finite non-negative numbers."""
    run_dir = Path(run_dir)
    path = run_dir / LINEAGE_FILE
    data = _read_committed(run_dir, LINEAGE_FILE, "lineage record", limit=_JSON_LIMIT)
    if data is None:
        return None
    doc = _parse_json(data, path, "lineage record")

    def bad(field: str, value: Any, want: str) -> CheckpointError:
        return CheckpointError(f"{path}: {field}={_short(value, 200)} must be {want}; the lineage record is "
                               f"corrupted — restore it")

    if not isinstance(doc, dict):
        raise bad("the file", doc, "a JSON object")
    if "flops" in doc and not (_is_number(doc["flops"]) and doc["flops"] >= 0):
        raise bad("flops", doc["flops"], "a finite non-negative number")
    parents = doc.get("parents", [])
    if not isinstance(parents, list):
        raise bad("parents", parents, "a list")
    for i, parent in enumerate(parents):
        if not isinstance(parent, dict):
            raise bad(f"parents[{i}]", parent, "an object")
        if "path" in parent and not isinstance(parent["path"], str):
            raise bad(f"parents[{i}].path", parent["path"], "a string")
        if "flops" in parent and not (_is_number(parent["flops"]) and parent["flops"] >= 0):
            raise bad(f"parents[{i}].flops", parent["flops"], "a finite non-negative number")
    return doc


def model_fingerprint(run_dir: str | Path) -> str:
    """The canonical fingerprint of a checkpoint's model (config + tensors by sorted name, dtype, shape and
    bytes; see :func:`weights_fingerprint`): the same for bit-identical models written by any process.
    Read from config.json, or computed from the weights for directories saved before it was recorded."""
    run_dir = Path(run_dir)
    _, raw = read_config(run_dir)
    if raw.get("fingerprint"):
        return raw["fingerprint"]
    return weights_fingerprint(_committed_weights(run_dir), raw, run_dir / MODEL_FILE)


def _committed_weights(run_dir: Path) -> bytes:
    data = _read_committed(run_dir, MODEL_FILE, "weights file")
    if data is None:
        raise CheckpointError(f"{run_dir} has no {MODEL_FILE}; the checkpoint is incomplete — retrain or restore it")
    return data


def dir_fingerprint(run_dir: str | Path) -> str:
    """The weights file hash of a checkpoint (lineage ``sha256``; it changes with the file's byte layout —
    :func:`model_fingerprint` is the process-independent identity, recorded as ``fingerprint``)."""
    run_dir = Path(run_dir)
    _, raw = read_config(run_dir)
    if raw.get("weights_sha256"):
        return raw["weights_sha256"]
    return sha256_bytes(_committed_weights(run_dir))


def total_flops(run_dir: str | Path, include_parents: bool = True) -> float:
    """FLOPs spent to produce a checkpoint, adding its parents' (via lineage.json) when asked. A lineage
    that leads back to a directory already on the path is a cycle and raises CheckpointError."""
    total = 0.0
    stack: list[tuple[Path, tuple[str, ...]]] = [(Path(run_dir), ())]
    visits = 0
    while stack:
        d, chain = stack.pop()
        real = os.path.realpath(d)
        if real in chain:
            loop = " -> ".join([*chain[chain.index(real):], real])
            raise CheckpointError(f"the lineage of {run_dir} has a cycle ({_short(loop, 300)[1:-1]}); a checkpoint "
                                  f"cannot derive from itself — fix the parents in {d / LINEAGE_FILE}")
        visits += 1
        if visits > 100_000:
            raise CheckpointError(f"the lineage of {run_dir} has more than 100000 ancestors; {d / LINEAGE_FILE} "
                                  f"is corrupted")
        lineage = read_lineage(d) or {}
        own = float(lineage.get("flops", 0.0))
        trainer = read_trainer_json(d) if d.is_dir() else None
        if trainer is not None:
            own = max(own, float(trainer.get("flops", 0.0)))
        total += own
        if include_parents:
            for parent in lineage.get("parents", []):
                path = parent.get("path")
                if path and Path(path).is_dir():
                    stack.append((Path(path), (*chain, real)))
                else:
                    total += float(parent.get("flops", 0.0))
    return total


# ---------------------------------------------------------------------------- opening and recording (every verb)
# A verb that reads a checkpoint directory opens it here (model, tokenizer, what it needs to know about the
# directory) and records it in its own lineage.json with parent_record, so the checks, the error messages and
# the lineage entries are the same for grow, distill, extract, quantize, prompt-tune, search and convert.
@dataclass(frozen=True)
class CheckpointRecord:
    """What a verb needs about a checkpoint directory it reads."""

    path: Path  # resolved
    config: ModelConfig
    fingerprint: str  # its weights' sha256 (dir_fingerprint)
    flops: float  # FLOPs behind it, its parents' included (total_flops)
    lineage: dict[str, Any]  # its lineage.json ({} when it has none)
    data_spec: dict[str, Any]  # the data it was trained on: trainer state's data_spec, else lineage's data, else {}
    quantization: dict[str, Any] | None  # config.json's quantization block of a packed/int8 directory
    tokenizer_json: str | None  # tokenizer.json verbatim (a derived directory copies it byte for byte), or None

    def parent(self, role: str | None = None) -> dict[str, Any]:
        """This directory as an entry of a derived directory's lineage ``parents`` (see :func:`parent_record`)."""
        return _parent_entry(self.path, self.fingerprint, self.flops, role)


def _parent_entry(path: Path, sha256: str, flops: float, role: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": str(path), "sha256": sha256, "flops": float(flops)}
    if role is not None:
        entry["role"] = role
    return _with_parent_fingerprints({"parents": [entry]})["parents"][0]  # as save_checkpoint records it


def parent_record(run_dir: str | Path, role: str | None = None, *, flops: float | None = None) -> dict[str, Any]:
    """The lineage entry of a parent directory: resolved path, weights sha256, the FLOPs behind it (parents
    included, or ``flops`` when the caller measured them) and, when given, its ``role`` (teacher, init, ...).
    :func:`total_flops` follows these entries to add up the compute behind a model."""
    run_dir = Path(run_dir)
    return _parent_entry(run_dir.resolve(), dir_fingerprint(run_dir),
                         total_flops(run_dir) if flops is None else flops, role)


def saved_data(run_dir: str | Path) -> dict[str, Any]:
    """The data spec a checkpoint was trained on: its trainer state's ``data_spec``, else (grown, extracted or
    quantized directories) the ``data`` of its lineage, else {}."""
    run_dir = Path(run_dir)
    trainer = read_trainer_json(run_dir)
    saved = trainer.get("data_spec") if trainer is not None else None
    return dict(saved or (read_lineage(run_dir) or {}).get("data") or {})


def _check_is_checkpoint(run_dir: Path, role: str, error: type[Exception]) -> None:
    if not run_dir.is_dir():
        raise error(f"{role} checkpoint directory {run_dir} does not exist; pass a directory written by "
                    f"`morphlm train --out DIR`")
    foreign = _foreign_folder(run_dir)
    if foreign:
        raise error(f"{run_dir} is not a morphlm checkpoint but {foreign}")
    if not has_checkpoint(run_dir):
        raise error(f"{run_dir} is not a checkpoint directory ({CONFIG_FILE} or {MODEL_FILE} is missing); pass a "
                    f"directory written by `morphlm train --out DIR` (or convert a Hugging Face one with "
                    f"`morphlm convert`)")


def read_record(run_dir: str | Path, *, role: str = "checkpoint",
                error: type[Exception] = CheckpointError) -> CheckpointRecord:
    """The :class:`CheckpointRecord` of a checkpoint directory, without loading its weights."""
    run_dir = Path(run_dir)
    _check_is_checkpoint(run_dir, role, error)
    cfg, raw = read_config(run_dir)
    quant = raw.get("quantization")
    return CheckpointRecord(path=run_dir.resolve(), config=cfg, fingerprint=dir_fingerprint(run_dir),
                            flops=total_flops(run_dir), lineage=read_lineage(run_dir) or {},
                            data_spec=saved_data(run_dir), quantization=quant if isinstance(quant, dict) else None,
                            tokenizer_json=load_tokenizer_json(run_dir))


def open_tokenizer(run_dir: str | Path, need: str | None = None, *, error: type[Exception] = CheckpointError):
    """The Tokenizer of a checkpoint directory. A directory without tokenizer.json gives None, or, when the
    caller ``need``s it (``need`` says what for), one error naming the directory, the reason and the fix."""
    from ..data.tokenizer import Tokenizer

    tj = load_tokenizer_json(run_dir)
    if tj is None:
        if need is None:
            return None
        raise error(f"{run_dir} has no {TOKENIZER_FILE}; {need}. Use the directory the model was trained into "
                    f"(`morphlm train --out DIR` writes the tokenizer there)")
    return Tokenizer.from_json_str(tj)


def open_checkpoint(run_dir: str | Path, *, need_tokenizer: str | None = None, device: str | torch.device = "cpu",
                    verify: bool = True, role: str = "checkpoint", error: type[Exception] = CheckpointError):
    """``(model, tokenizer, record)`` of a checkpoint directory: the one way every verb opens its input.

    The model is built as :func:`load_model` builds it (quantized directories through their loaders); the
    tokenizer is None for a directory without tokenizer.json unless ``need_tokenizer`` (what the caller needs
    it for) is given, which makes its absence an error; ``record`` is the :class:`CheckpointRecord` (path,
    fingerprint, FLOPs, lineage, data spec). A missing directory or one that is not a checkpoint raises
    ``error`` (``role`` names the directory in the message: source, teacher, ...)."""
    run_dir = Path(run_dir)
    _check_is_checkpoint(run_dir, role, error)
    tokenizer = open_tokenizer(run_dir, need_tokenizer, error=error)
    model = load_model(run_dir, device=device, verify=verify)
    return model, tokenizer, read_record(run_dir, role=role, error=error)


# ---------------------------------------------------------------------------- output folders (every verb)
# A verb writes a directory only where nothing else lives: a new or empty folder, or its own resumable run of
# the same kind. Every verb claims its --out here, so the refusals and their wording are the same everywhere.
_IGNORED_ENTRIES = (LOCK_FILE, STAGING)  # what a killed writer may leave in an otherwise empty folder


def _entries(path: Path) -> list[str]:
    return sorted(e for e in os.listdir(path) if e not in _IGNORED_ENTRIES)


def _lineage_verb(path: Path) -> str | None:
    try:
        verb = (read_lineage(path) or {}).get("verb")
    except CheckpointError:
        return None
    return verb if isinstance(verb, str) else None


def _is_own_run(path: Path, kind: str) -> bool:
    """``path`` holds a resumable run written by the verb ``kind`` (lineage.json's ``verb``) — or, for
    multi-stage verbs (distill --stage task), only stage folders that each hold one, plus a metrics log."""
    if has_checkpoint(path):
        return has_trainer_state(path) and _lineage_verb(path) == kind
    entries = [e for e in _entries(path) if e != METRICS_FILE]
    return bool(entries) and all(not (path / e).is_symlink() and (path / e).is_dir() and _is_own_run(path / e, kind)
                                 for e in entries)


def _is_hf_folder(path: Path) -> bool:
    cfg = path / CONFIG_FILE
    if not cfg.is_file() or cfg.is_symlink() or cfg.stat().st_size > 16 * 1024 * 1024:
        return False
    try:
        doc = json.loads(cfg.read_bytes().decode("utf-8"))
    except (ValueError, OSError, RecursionError):
        return False
    return isinstance(doc, dict) and "model_type" in doc


def _foreign_folder(path: Path) -> str | None:
    """A model folder of another kind, with what to do instead (None for anything else): a Hugging Face model
    or a prompt-tuning output, which readers of checkpoints would otherwise reject with a field-by-field error."""
    if _is_hf_folder(path):
        return ("a Hugging Face model (config.json with model_type); convert it first with "
                "`morphlm convert DIR OUT` and pass OUT")
    if not has_checkpoint(path) and _lineage_verb(path) == "prompt-tune":
        return ("the output of `morphlm prompt-tune` (a soft prompt for a frozen model); pass the model "
                "directory it was tuned on")
    return None


def _describe_folder(path: Path, entries: list[str]) -> str:
    """What a non-empty folder holds, in words, for a refusal."""
    if _is_hf_folder(path):
        return "a Hugging Face model (config.json with model_type)"
    if has_checkpoint(path):
        what = "a checkpoint"
        verb = _lineage_verb(path)
        if verb:
            what += f" written by `morphlm {verb}`"
        try:
            quant = read_config(path)[1].get("quantization")
        except CheckpointError:
            quant = None
        if isinstance(quant, dict):
            what += f" ({_short(quant.get('method'), 40)} quantized)"
        return what
    verb = _lineage_verb(path) if (path / LINEAGE_FILE).is_file() else None
    if verb:
        return f"the output of `morphlm {verb}`"
    if entries == [METRICS_FILE]:
        return "the metrics log of a run stopped before its first save"
    shown = ", ".join(_short(e, 60)[1:-1] for e in entries[:5])
    more = ", ..." if len(entries) > 5 else ""
    return f"{len(entries)} other entr{'y' if len(entries) == 1 else 'ies'} ({shown}{more})"


def _refuse_if_locked(path: Path, error: type[Exception]) -> None:
    """A folder another process is writing: the lock's message (naming its PID), whatever the folder holds."""
    lock = path / LOCK_FILE
    if holds_writer_lock(path) or _lstat(lock) is None:
        return
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return  # a link or an unreadable lock: taking the lock reports it
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                pid = _lock_holder(fd)
                who = f"process {pid}" if pid is not None else "another process"
                raise CheckpointLocked(f"{path} is being written by {who} (it holds {lock}); two writers would mix "
                                       f"their checkpoints — wait for it to finish, stop it, or choose another --out",
                                       pid) from exc
            return
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def claim_output_dir(path: str | Path, kind: str, *, inputs: Any = (), resume: bool = False,
                     own: Callable[[Path], bool] | None = None, error: type[Exception] = CheckpointError) -> Path:
    """Check that the verb ``kind`` (its lineage ``verb``: train, grow, distill, ...) may write the folder
    ``path``; returns it. Allowed: a folder that does not exist yet (its parent writable), an empty one (a
    stale ``.lock`` or ``.staging`` left by a killed writer does not count), or — with ``resume`` — the verb's
    own resumable run (``own(path)`` decides where given, else lineage.json's ``verb`` == ``kind`` with trainer
    state). Refused, with ``error`` naming what the folder holds and the fix: the filesystem root, the home
    directory, a file, any of ``inputs`` (the directories the verb reads: paths or (role, path) pairs, the role
    naming it in messages) or a folder containing one, a folder
    inside a checkpoint input, an unwritable folder, a folder another process writes (its PID named), and
    every other non-empty folder. Nothing is created or changed."""
    path = Path(path)
    real = Path(os.path.realpath(path))
    name = "search arch" if kind == "search-arch" else kind
    if real == Path(real.anchor):
        raise error(f"--out {path} is the filesystem root; {name} writes a folder of its own — choose a new folder "
                    f"such as runs/NAME")
    if real == Path(os.path.realpath(Path.home())):
        raise error(f"--out {path} is your home directory; {name} writes a folder of its own — choose a new folder "
                    f"such as ~/runs/NAME")
    for item in ([inputs] if isinstance(inputs, (str, Path)) else inputs or []):
        role, src = item if isinstance(item, tuple) else ("input", item)
        if not src:
            continue
        src_real = Path(os.path.realpath(src))
        if real == src_real:
            raise error(f"--out {path} must differ from the {role} directory {src} that {name} reads; nothing is "
                        f"ever overwritten — choose another --out")
        if src_real.is_relative_to(real):
            raise error(f"--out {path} contains the {role} directory {src} that {name} reads; writing there could "
                        f"overwrite it — choose another --out")
        if real.is_relative_to(src_real) and has_checkpoint(src_real):
            raise error(f"--out {path} lies inside the {role} checkpoint {src} that {name} reads; a checkpoint holds "
                        f"only its own files — choose another --out")
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise error(f"--out {path} exists and is not a directory; {name} writes a folder — remove it or choose "
                    f"another --out")
    if not path.exists():
        parent = real.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise error(f"--out {path} cannot be created: {parent} is a file, not a folder — choose another --out")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise error(f"--out {path} cannot be created: {parent} is not writable (permission denied) — fix its "
                        f"permissions or choose another --out")
        return path
    try:
        entries = _entries(path)
    except OSError as exc:
        raise error(f"--out {path} cannot be read ({exc.strerror}) — fix its permissions or choose another "
                    f"--out") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise error(f"--out {path} is not writable (permission denied) — fix its permissions or choose another --out")
    _refuse_if_locked(path, error)
    if not entries:
        return path
    if entries == [METRICS_FILE] and resume:
        return path  # a run stopped before its first save: it starts over
    is_own = (own or (lambda p: _is_own_run(p, kind)))(path)
    if is_own:
        if resume:
            return path
        raise error(f"{path} already holds a {name} run; pass --resume auto to continue it, or choose another "
                    f"--out so nothing is overwritten")
    what = _describe_folder(path, entries)
    raise error(f"{path} is not empty: it already holds {what}; {name} writes only into a new or empty folder"
                f"{' or its own run' if resume else ''} — choose another --out so nothing is overwritten")
