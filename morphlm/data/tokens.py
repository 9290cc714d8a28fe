"""Token store: a corpus tokenized once into flat numpy memmaps, split into train/val by whole documents.

Layout of a store directory::

    train.bin       token ids of the training documents, each followed by <eos>   (uint16 or uint32)
    val.bin         the same for the validation documents
    tokenizer.json  the tokenizer that produced the ids (a copy, for inspection)
    meta.json       counts, dtype, fingerprints; written last, so a store without it is incomplete

Splitting by whole documents keeps validation text unseen during training (a random cut through a
document would leak its context across the split). A single-document corpus is the exception: it is
cut at a paragraph boundary near the end instead, and a warning says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np

from ..io import atomic_path, write_atomic
from .corpora import Document, corpus_fingerprint, default_cache_dir, load_corpus
from .tokenizer import Tokenizer, TokenizerError, train_tokenizer

log = logging.getLogger(__name__)

__all__ = ["TokenStore", "TokenStoreError", "prepare_lm_store", "remove_stale_temp_files"]

FORMAT_VERSION = 1
_META_KEYS = ("format_version", "vocab_size", "tokenizer_fingerprint", "corpus_fingerprint", "n_train_docs",
              "n_val_docs", "n_train_tokens", "n_val_tokens", "dtype", "val_fraction", "seed")
# Encode this many characters per encode_batch call: large enough for the Rust side to parallelize,
# small enough to bound memory and give the progress bar something to show.
_CHUNK_CHARS = 4_000_000
_CHUNK_DOCS = 512
_PROGRESS_MIN_CHARS = 2_000_000


class TokenStoreError(ValueError):
    """A token store could not be built or opened; the message says why and what to do."""


# io.temp_path's names: ".<target name>.<writer's PID>.tmp"
_TEMP_NAME = re.compile(r"\..+\.(\d{1,10})\.tmp\Z")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # it exists (another user's process)
        return True
    return True


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (io.temp_path's ``.NAME.PID.tmp``) a writer killed mid-write left in
    ``folder``: those whose PID is no longer a running process. Files of live writers (this process
    included) are kept. Returns the paths removed."""
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for path in entries:
        m = _TEMP_NAME.match(path.name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        try:
            if path.is_file() and not path.is_symlink():
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    if removed:
        log.info("removed %d temporary file(s) a killed build left in %s", len(removed), folder)
    return removed


def _dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)



def _split_single_doc(doc: Document, val_fraction: float) -> tuple[Document, Document]:
    """Cut one document near ``1 - val_fraction`` of its length, preferring a paragraph boundary."""
    text = doc.text
    target = int(len(text) * (1.0 - val_fraction))
    lo = int(len(text) * 0.5)  # never search further back than the middle
    cut = -1
    for sep in ("\n\n", "\n", " "):
        before = text.rfind(sep, lo, target)
        after = text.find(sep, target)
        cands = [c for c in (before, after) if c > 0]
        if cands:
            cut = min(cands, key=lambda c: abs(c - target)) + len(sep)
            break
    if cut <= 0 or cut >= len(text):
        cut = target
    cut = min(max(cut, 1), len(text) - 1)
    return Document(doc.name + "#train", text[:cut]), Document(doc.name + "#val", text[cut:])


class TokenStore:
    """Tokenized train/val splits as read-only memmaps (``train``, ``val``) plus ``meta``."""

    def __init__(self, path: Path, meta: dict, train: np.ndarray, val: np.ndarray):
        self.path = path
        self.meta = meta
        self.train = train
        self.val = val

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer.json"

    def __repr__(self) -> str:
        m = self.meta
        return (f"TokenStore({str(self.path)!r}, train={m['n_train_tokens']:,} tokens/{m['n_train_docs']} docs, "
                f"val={m['n_val_tokens']:,} tokens/{m['n_val_docs']} docs, vocab={m['vocab_size']})")

    # ---- build ------------------------------------------------------------------------------------

    @classmethod
    def build(cls, docs: list[Document], tokenizer: Tokenizer, out_dir: str | os.PathLike, *,
              val_fraction: float = 0.05, seed: int = 0, show_progress: bool = True) -> TokenStore:
        """Tokenize ``docs`` into ``out_dir`` (created; an existing store there is replaced)."""
        docs = list(docs)
        if not docs:
            raise TokenStoreError("cannot build a token store from zero documents; load a non-empty corpus.")
        if not 0.0 < float(val_fraction) < 1.0:
            raise TokenStoreError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}; "
                                  "0.05 is a good default.")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(out)  # a killed earlier build's half-written splits
        # Remove the old meta first: from here until the new meta lands, the directory is not a store.
        (out / "meta.json").unlink(missing_ok=True)

        if len(docs) == 1:
            tr, va = _split_single_doc(docs[0], val_fraction)
            train_docs, val_docs = [tr], [va]
            split_mode = "single-document"
            log.warning("the corpus has a single document (%s); splitting it at a paragraph boundary near "
                        "%.0f%% of its length for validation instead of by whole documents",
                        docs[0].name, 100 * (1 - val_fraction))
        else:
            perm = np.random.default_rng(seed).permutation(len(docs))
            n_val = min(max(1, round(len(docs) * val_fraction)), len(docs) - 1)
            val_idx = sorted(perm[:n_val].tolist())
            train_idx = sorted(perm[n_val:].tolist())
            train_docs = [docs[i] for i in train_idx]
            val_docs = [docs[i] for i in val_idx]
            split_mode = "documents"

        dtype = _dtype_for(tokenizer.vocab_size)
        total_chars = sum(len(d.text) for d in docs)
        bar = None
        if show_progress and total_chars >= _PROGRESS_MIN_CHARS:
            from ..progress import progress_bar

            bar = progress_bar(total=total_chars, unit="char", unit_scale=True, desc="tokenizing", leave=False)
        try:
            n_train = cls._write_split(train_docs, tokenizer, out / "train.bin", dtype, bar)
            n_val_tok = cls._write_split(val_docs, tokenizer, out / "val.bin", dtype, bar)
        finally:
            if bar is not None:
                bar.close()
        tokenizer.save(out / "tokenizer.json")
        meta = {
            "format_version": FORMAT_VERSION,
            "vocab_size": tokenizer.vocab_size,
            "tokenizer_fingerprint": tokenizer.fingerprint(),
            "corpus_fingerprint": corpus_fingerprint(docs),
            "n_train_docs": len(train_docs),
            "n_val_docs": len(val_docs),
            "n_train_tokens": n_train,
            "n_val_tokens": n_val_tok,
            "dtype": dtype.name,
            "val_fraction": float(val_fraction),
            "seed": int(seed),
            "split_mode": split_mode,
            "eos_id": tokenizer.boundary_id,  # the document separator: eos, or sep for a BERT tokenizer
            "val_doc_names": [d.name for d in val_docs][:1000],
        }
        write_atomic(out / "meta.json", json.dumps(meta, indent=1))
        log.info("built token store %s: %d train tokens (%d docs), %d val tokens (%d docs)",
                 out, n_train, len(train_docs), n_val_tok, len(val_docs))
        return cls.open(out)

    @staticmethod
    def _write_split(docs: list[Document], tokenizer: Tokenizer, path: Path, dtype: np.dtype, bar) -> int:
        eos = tokenizer.boundary_id
        n = 0
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            i = 0
            while i < len(docs):
                # Group documents into a chunk of bounded size for one parallel encode_batch call.
                j, chars = i, 0
                while j < len(docs) and (j == i or (chars + len(docs[j].text) <= _CHUNK_CHARS
                                                    and j - i < _CHUNK_DOCS)):
                    chars += len(docs[j].text)
                    j += 1
                for ids in tokenizer.encode_batch([d.text for d in docs[i:j]]):
                    arr = np.empty(len(ids) + 1, dtype=dtype)
                    arr[:-1] = ids
                    arr[-1] = eos
                    f.write(arr.tobytes())
                    n += arr.size
                if bar is not None:
                    bar.update(chars)
                i = j
        return n

    # ---- open -------------------------------------------------------------------------------------

    @classmethod
    def open(cls, out_dir: str | os.PathLike) -> TokenStore:
        """Open a built store read-only; raise TokenStoreError if it is missing, incomplete or corrupt."""
        out = Path(out_dir)
        fix = f"Delete {out} and rebuild it (prepare_lm_store rebuilds a missing store automatically)."
        meta_path = out / "meta.json"
        if not meta_path.is_file():
            if out.is_dir() and any(out.iterdir()):
                raise TokenStoreError(f"{out} has no meta.json: the token store build was interrupted. {fix}")
            raise TokenStoreError(f"no token store at {out} (meta.json missing). Build one with "
                                  "TokenStore.build or prepare_lm_store.")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TokenStoreError(f"{meta_path} is corrupt ({e}). {fix}") from None
        if not isinstance(meta, dict):
            raise TokenStoreError(f"{meta_path} is corrupt (not a JSON object). {fix}")
        missing = [k for k in _META_KEYS if k not in meta]
        if missing:
            raise TokenStoreError(f"{meta_path} is corrupt or from another program: missing {missing}. {fix}")
        if meta["format_version"] != FORMAT_VERSION:
            raise TokenStoreError(f"{out} has token store format {meta['format_version']!r}, this morphlm reads "
                                  f"format {FORMAT_VERSION}. {fix}")
        if meta["dtype"] not in ("uint16", "uint32"):
            raise TokenStoreError(f"{meta_path} names dtype {meta['dtype']!r}; expected uint16 or uint32. {fix}")
        dtype = np.dtype(meta["dtype"])
        arrays = []
        for split in ("train", "val"):
            p = out / f"{split}.bin"
            n = meta[f"n_{split}_tokens"]
            if not isinstance(n, int) or n < 0:
                raise TokenStoreError(f"{meta_path} has an invalid n_{split}_tokens={n!r}. {fix}")
            if not p.is_file():
                raise TokenStoreError(f"{p} is missing. {fix}")
            size = p.stat().st_size
            if size != n * dtype.itemsize:
                raise TokenStoreError(f"{p} has {size} bytes but meta.json says {n} {dtype.name} tokens "
                                      f"({n * dtype.itemsize} bytes): the store is corrupt. {fix}")
            arrays.append(np.memmap(p, dtype=dtype, mode="r", shape=(n,)) if n > 0 else np.zeros(0, dtype))
        return cls(out, meta, arrays[0], arrays[1])


def _short_hash(*parts) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode("utf-8")).hexdigest()[:20]


def prepare_lm_store(spec: str, vocab_size: int, *, cache_dir: str | os.PathLike | None = None,
                     tokenizer: Tokenizer | None = None, max_bytes: int | None = None,
                     val_fraction: float = 0.05, seed: int = 0,
                     show_progress: bool = True) -> tuple[Tokenizer, TokenStore]:
    """Corpus spec -> (tokenizer, token store), both cached under ``cache_dir`` and reused when present.

    The tokenizer is cached at ``<cache>/tokenizers/<corpus fp>-v<vocab_size>.json`` and trained when
    absent (``tokenizer`` overrides it and is used as-is, whatever its vocabulary size). The store is
    cached at ``<cache>/stores/<hash(corpus fp, tokenizer fp, val_fraction, seed)>/``.
    Under torchrun call it on one rank first (then barrier) so the others only open the cache.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    # temporary files of builds killed mid-write (tokenizers, token stores) would otherwise stay forever
    remove_stale_temp_files(cache / "tokenizers")
    stores = cache / "stores"
    if stores.is_dir():
        for folder in stores.iterdir():
            if folder.is_dir() and not folder.is_symlink():
                remove_stale_temp_files(folder)
    docs = load_corpus(spec, max_bytes=max_bytes, cache_dir=cache)
    cfp = corpus_fingerprint(docs)

    if tokenizer is None:
        tok_path = cache / "tokenizers" / f"{cfp[:24]}-v{int(vocab_size)}.json"
        if tok_path.is_file():
            try:
                tokenizer = Tokenizer.load(tok_path)
            except TokenizerError as e:
                log.warning("cached tokenizer is unusable (%s); retraining it", e)
        if tokenizer is None:
            log.info("training a %d-token BPE tokenizer on %d documents", vocab_size, len(docs))
            tokenizer = train_tokenizer((d.text for d in docs), vocab_size, show_progress=show_progress)
            tokenizer.save(tok_path)

    store_dir = cache / "stores" / _short_hash(cfp, tokenizer.fingerprint(), float(val_fraction), int(seed))
    if (store_dir / "meta.json").is_file():
        try:
            store = TokenStore.open(store_dir)
            if (store.meta["corpus_fingerprint"] == cfp
                    and store.meta["tokenizer_fingerprint"] == tokenizer.fingerprint()):
                return tokenizer, store
            log.warning("cached token store %s does not match this corpus/tokenizer; rebuilding it", store_dir)
        except TokenStoreError as e:
            log.warning("cached token store is unusable (%s); rebuilding it", e)
    store = TokenStore.build(docs, tokenizer, store_dir, val_fraction=val_fraction, seed=seed,
                             show_progress=show_progress)
    return tokenizer, store
