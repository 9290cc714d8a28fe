"""Text corpora: a small registry of named corpora plus local files, folders, globs and HF datasets.

Every loader returns a list of :class:`Document` (name, text) in a deterministic order, so that the
same spec always yields the same corpus fingerprint and therefore the same cached tokenizer and token
store. Decoding is uniform: gzip is detected by its magic bytes, UTF-8 (with or without BOM) is tried
first, then Latin-1 (which cannot fail); line endings become ``\\n``; a Project Gutenberg header and
footer are removed when present.
"""

from __future__ import annotations

import glob as _glob
import gzip
import hashlib
import json
import logging
import os
import re
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


log = logging.getLogger(__name__)

__all__ = [
    "CorpusError",
    "Document",
    "list_corpora",
    "load_corpus",
    "read_text_file",
    "strip_gutenberg",
    "corpus_fingerprint",
    "default_cache_dir",
]


class CorpusError(ValueError):
    """A corpus spec could not be turned into documents; the message says why and what to do."""


@dataclass(frozen=True)
class Document:
    """One unit of text; train/val splits never cut through a document (unless there is only one)."""

    name: str
    text: str


# Named corpora, filled by declaration (:func:`register_corpus`): name -> (one-line description, source), where
# ``source(cache_dir, streaming)`` yields the documents. Spec prefixes such as ``hf:`` map to
# ``source(spec, streaming)`` (:func:`register_corpus_prefix`). The downloaded corpora declare themselves in
# :mod:`morphlm.data.remote`; ``morphlm.data`` imports every declaring module.
_REGISTRY: dict[str, str] = {}
_SOURCES: dict[str, Callable[[Path, bool], Iterable["Document"]]] = {}
_PREFIXES: dict[str, Callable[[str, bool], Iterable["Document"]]] = {}


def register_corpus(name: str, description: str):
    """Declare a named corpus: ``@register_corpus("name", "what it is")`` over ``source(cache_dir, streaming)``."""
    def deco(fn):
        _REGISTRY[name] = description
        _SOURCES[name] = fn
        return fn
    return deco


def register_corpus_prefix(prefix: str):
    """Declare a spec scheme: ``@register_corpus_prefix("hf:")`` over ``source(spec, streaming)``."""
    def deco(fn):
        _PREFIXES[prefix] = fn
        return fn
    return deco

# Suffixes collected when the spec is a folder (lower-cased comparison).
FOLDER_SUFFIXES = (".txt", ".txt.gz", ".md", ".jsonl", ".jsonl.gz", ".py")
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
# Directory names never descended into for the stdlib corpus.
_STDLIB_EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idlelib", "idle_test"}
)


def list_corpora() -> dict[str, str]:
    """Registered corpus names and a one-line description of each.

    Besides these names, ``load_corpus`` accepts a file, folder or glob, and ``hf:NAME[:CONFIG][:SPLIT]``.
    """
    return dict(_REGISTRY)


def default_cache_dir() -> Path:
    """Where downloads, tokenizers and token stores are cached: ``$MORPHLM_CACHE`` or ``~/.cache/morphlm``."""
    env = os.environ.get("MORPHLM_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "morphlm"


# --------------------------------------------------------------------------------------------------
# decoding


def _decode_bytes(data: bytes) -> str:
    """Bytes -> str with the corpus rules: gunzip by magic, BOM-aware UTF-8, else Latin-1; LF newlines."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if data.startswith(b"\xef\xbb\xbf"):
        text = data[3:].decode("utf-8", errors="replace")
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16", errors="replace")
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            # Latin-1 maps every byte to a code point, so this never fails; it is the right guess for
            # the older Gutenberg / Windows files that are not UTF-8.
            text = data.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_text_file(path: str | os.PathLike, *, gutenberg: bool = True) -> str:
    """Read a plain or gzip-compressed text file.

    UTF-8 (with or without BOM) is tried first, then Latin-1; CRLF and CR become LF. When ``gutenberg``
    is true (the default) a Project Gutenberg header/footer is stripped if present.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise CorpusError(f"file not found: {p}. Check the path (it is resolved from {Path.cwd()}).") from None
    except OSError as e:
        raise CorpusError(f"cannot read {p}: {e}. Check that it is a readable file.") from e
    try:
        text = _decode_bytes(data)
    except (OSError, EOFError) as e:  # corrupt gzip stream
        raise CorpusError(f"{p} looks gzip-compressed but cannot be decompressed ({e}); re-download or "
                          "re-compress the file.") from e
    warn_if_binary(p, text)
    return strip_gutenberg(text) if gutenberg else text


# Share of control characters above which a file is binary data rather than text: written text has almost
# none (tabs, newlines and form feeds do not count); uniformly random bytes decode (as Latin-1) to about 24%.
BINARY_WARN_FRACTION = 0.05
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufffd]")


def binary_fraction(text: str, sample: int = 1_000_000) -> float:
    """Fraction of control characters (C0 but tab/newline/CR/FF, DEL, C1, U+FFFD) in the first ``sample``
    characters of ``text``."""
    head = text[:sample]
    return len(_CONTROL.findall(head)) / len(head) if head else 0.0


def warn_if_binary(path: Path, text: str) -> bool:
    """Log a warning naming ``path`` when its text looks like binary data (a model trained on it learns noise);
    returns whether it warned."""
    frac = binary_fraction(text)
    if frac <= BINARY_WARN_FRACTION:
        return False
    log.warning("%s looks like binary data, not text: %.0f%% of its characters are control characters (text has "
                "almost none); a model trained on it learns noise — check the path or the file's encoding",
                path, 100 * frac)
    return True


# --------------------------------------------------------------------------------------------------
# Project Gutenberg boilerplate

_PG_START = re.compile(
    r"^[ \t]*\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG E-?(?:BOOK|TEXT)\b[^*]{0,500}\*{3}[^\n]*$",
    re.IGNORECASE | re.MULTILINE,
)
_PG_OLD_START = re.compile(r"^[ \t]*\*END\*?\s*THE SMALL PRINT![^\n]*$", re.IGNORECASE | re.MULTILINE)
_PG_END = re.compile(
    r"^[ \t]*\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG E-?(?:BOOK|TEXT)", re.IGNORECASE | re.MULTILINE
)
_PG_END_LINE = re.compile(r"^[ \t]*End of (?:the |this )?Project Gutenberg", re.IGNORECASE | re.MULTILINE)
# How far before the "*** END OF" marker an "End of the Project Gutenberg EBook of ..." line may sit.
_PG_END_LINE_WINDOW = 800


def strip_gutenberg(text: str) -> str:
    """Remove a Project Gutenberg header and footer; return ``text`` unchanged when it has no markers.

    Header: everything up to and including ``*** START OF (THE|THIS) PROJECT GUTENBERG EBOOK ... ***``
    (the title may wrap onto a second line), or, in old files, the ``*END*THE SMALL PRINT! ...*END*`` line.
    Footer: from ``*** END OF ... PROJECT GUTENBERG EBOOK`` (or the ``End of the Project Gutenberg
    EBook of ...`` line just before it), or from the last ``End of (the) Project Gutenberg ...`` line in
    old files that have no ``*** END`` marker.
    """
    start = 0
    m = _PG_START.search(text)
    if m is None:
        m = _PG_OLD_START.search(text)
    if m is not None:
        start = m.end()

    end = len(text)
    m_end = _PG_END.search(text, start)
    if m_end is not None:
        end = m_end.start()
        # Prefer the "End of the Project Gutenberg EBook of X" line that often precedes the marker.
        window_start = max(start, end - _PG_END_LINE_WINDOW)
        lines = list(_PG_END_LINE.finditer(text, window_start, end))
        if lines:
            end = lines[0].start()
    else:
        lines = list(_PG_END_LINE.finditer(text, start))
        if lines:
            end = lines[-1].start()

    if start == 0 and end == len(text):
        return text
    body = text[start:end]
    body = re.sub(r"\A(?:[ \t]*\n)+", "", body)  # leading blank lines; keeps the first line's indent
    return body.rstrip()


# --------------------------------------------------------------------------------------------------
# fingerprint


def corpus_fingerprint(docs: list[Document]) -> str:
    """SHA-256 (hex) over every document's name and text, in order; length-prefixed so it is unambiguous."""
    h = hashlib.sha256()
    h.update(b"morphlm-corpus-v1\0")
    h.update(str(len(docs)).encode() + b"\0")
    for d in docs:
        for part in (d.name, d.text):
            b = part.encode("utf-8", errors="surrogatepass")
            h.update(str(len(b)).encode() + b"\0")
            h.update(b)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# loaders (each yields documents lazily so that max_bytes can stop early)


def _iter_jsonl(path: Path, name: str) -> Iterator[Document]:
    text = read_text_file(path, gutenberg=False)
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(
                f"{path}: line {lineno} is not valid JSON ({e.msg} at column {e.colno}). Each line of a "
                '.jsonl corpus must be one JSON object such as {"text": "..."}; fix or remove that line.'
            ) from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            what = "has no string field \"text\"" if isinstance(obj, dict) else f"is a JSON {type(obj).__name__}"
            raise CorpusError(
                f"{path}: line {lineno} {what}. Each line of a .jsonl corpus must be a JSON object with "
                'a string field "text", e.g. {"text": "..."}; fix that line or convert the file.'
            )
        yield Document(f"{name}:{lineno}", obj["text"])


def _iter_file(path: Path, name: str) -> Iterator[Document]:
    if path.name.lower().endswith(_JSONL_SUFFIXES):
        yield from _iter_jsonl(path, name)
    else:
        yield Document(name, read_text_file(path))


def _folder_files(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Hidden folders (.git, .venv) and bytecode caches are never corpus material.
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
        for fn in filenames:
            if fn.lower().endswith(FOLDER_SUFFIXES) and not fn.startswith("."):
                found.append(Path(dirpath) / fn)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _iter_folder(root: Path) -> Iterator[Document]:
    for p in _folder_files(root):
        yield from _iter_file(p, p.relative_to(root).as_posix())


def _iter_glob(pattern: str) -> Iterator[Document]:
    matches = sorted(_glob.glob(os.path.expanduser(pattern), recursive=True))
    if not matches:
        raise CorpusError(
            f"the glob {pattern!r} matches no files (relative to {Path.cwd()}). Check the pattern; use "
            "'**' with a folder to search recursively, e.g. 'books/**/*.txt'."
        )
    for m in matches:
        p = Path(m)
        if p.is_dir():
            for sub in _folder_files(p):
                yield from _iter_file(sub, sub.as_posix())
        elif p.is_file():
            yield from _iter_file(p, p.as_posix())


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@register_corpus("stdlib", "Python standard-library sources of the running interpreter (no tests); offline, ~10 MB")
def _stdlib_source(cache: Path, streaming: bool) -> Iterator[Document]:
    return _iter_stdlib()


def _iter_stdlib() -> Iterator[Document]:
    root = _stdlib_root()
    if not root.is_dir():
        raise CorpusError(
            f"the standard library folder {root} does not exist on this interpreter. Use another corpus "
            "(e.g. a local folder of .txt files) or an interpreter that ships its sources."
        )
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _STDLIB_EXCLUDED_DIRS and not d.startswith(".")]
        files.extend(Path(dirpath) / fn for fn in filenames if fn.endswith(".py"))
    for p in sorted(files, key=lambda p: p.relative_to(root).as_posix()):
        yield Document(p.relative_to(root).as_posix(), read_text_file(p, gutenberg=False))


# --------------------------------------------------------------------------------------------------
# entry point


def _has_glob_chars(s: str) -> bool:
    return any(c in s for c in "*?[")


def _truncate_utf8(text: str, budget: int) -> str:
    """The longest prefix of ``text`` of at most ``budget`` UTF-8 bytes, cut at a line end when possible."""
    head = text.encode("utf-8")[:budget].decode("utf-8", errors="ignore")
    cut = head.rfind("\n")
    return head[: cut + 1] if cut > 0 else head


def _collect(docs: Iterable[Document], max_bytes: int | None) -> list[Document]:
    out: list[Document] = []
    total = 0
    for d in docs:
        if not d.text.strip():
            continue  # empty documents carry nothing to learn and would only add separators
        if max_bytes is not None:
            n = len(d.text.encode("utf-8"))
            if total + n > max_bytes:
                # The document that crosses the cap is cut (at a line end) so the total never exceeds it.
                head = _truncate_utf8(d.text, max_bytes - total)
                if head.strip():
                    out.append(Document(d.name, head))
                break
            total += n
        out.append(d)
        if max_bytes is not None and total >= max_bytes:
            break
    return out


def load_corpus(spec: str | os.PathLike, *, max_bytes: int | None = None,
                cache_dir: str | os.PathLike | None = None) -> list[Document]:
    """Load a corpus as a list of documents (deterministic order; empty documents dropped).

    ``spec``: a registered name (see :func:`list_corpora`), a file, a folder (recursively
    ``*.txt *.txt.gz *.md *.jsonl *.jsonl.gz *.py``), a glob, or ``hf:NAME[:CONFIG][:SPLIT]``.
    ``max_bytes`` caps the total UTF-8 size: documents are added in order until the cap is reached
    (the one crossing it is cut at a line end). ``cache_dir`` is used by downloaded corpora.
    """
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0):
        raise CorpusError(f"max_bytes must be a positive integer or None, got {max_bytes!r}.")
    spec_str = os.fspath(spec)
    if not isinstance(spec_str, str) or not spec_str.strip():
        raise CorpusError(f"empty corpus spec; pass one of {sorted(_REGISTRY)} or a path to text files.")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()

    source: Iterable[Document]
    prefix = next((p for p in _PREFIXES if spec_str.startswith(p)), None)
    if spec_str in _SOURCES:
        source = _SOURCES[spec_str](cache, max_bytes is not None)
    elif prefix is not None:
        source = _PREFIXES[prefix](spec_str, max_bytes is not None)
    else:
        path = Path(spec_str).expanduser()
        if path.is_file():
            source = _iter_file(path, path.name)
        elif path.is_dir():
            source = _iter_folder(path)
        elif _has_glob_chars(spec_str):
            source = _iter_glob(spec_str)
        else:
            looks_like_path = os.sep in spec_str or "/" in spec_str or spec_str.startswith((".", "~")) \
                or Path(spec_str).suffix != ""
            names = ", ".join(sorted(_REGISTRY))
            if looks_like_path:
                raise CorpusError(
                    f"corpus path {spec_str!r} does not exist (resolved from {Path.cwd()}). Check the "
                    f"path, or use a registered corpus name ({names})."
                )
            raise CorpusError(
                f"unknown corpus {spec_str!r}: it is neither a registered name ({names}) nor an existing "
                "path. Use one of those names, a path that exists (file, folder or glob), or "
                "hf:NAME[:CONFIG][:SPLIT]."
            )

    docs = _collect(source, max_bytes)
    if not docs:
        raise CorpusError(
            f"corpus {spec_str!r} is empty: it yielded no documents with non-whitespace text. Point it at "
            f"files with text in them (folders are searched for {' '.join('*' + s for s in FOLDER_SUFFIXES)})."
        )
    return docs
