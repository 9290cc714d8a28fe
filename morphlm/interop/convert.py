"""Directory-level conversion between Hugging Face model folders and morphlm checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

from ..train import checkpoint as ckpt
from .hf import InteropError, export_hf_model, load_hf_model


def is_hf_dir(path: Path) -> bool:
    cfg = path / "config.json"
    if not cfg.exists():
        return False
    try:
        return "model_type" in json.loads(cfg.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False


def convert_dir(src: str | Path, out: str | Path) -> str:
    """Convert in the direction the source implies; returns what was written ("morphlm" or "hf")."""
    src, out = Path(src), Path(out)
    if not src.exists():
        raise InteropError(f"{src} does not exist; pass a Hugging Face model folder or a morphlm checkpoint")
    ckpt.claim_output_dir(out, "convert", inputs=[("source", src)], error=InteropError)
    if is_hf_dir(src):
        model, cfg = load_hf_model(src)
        tok = src / "tokenizer.json"
        lineage = {"verb": "convert", "from": "huggingface", "source": str(src.resolve())}
        ckpt.save_checkpoint(out, model.state_dict(), cfg,
                             tokenizer_json=tok.read_text(encoding="utf-8") if tok.exists() else None,
                             lineage=lineage)
        return "morphlm"
    if ckpt.has_checkpoint(src):
        model, _, record = ckpt.open_checkpoint(src, error=InteropError)
        export_hf_model(model, out, tokenizer_json=record.tokenizer_json)
        return "hf"
    raise InteropError(f"{src} is neither a Hugging Face model folder (config.json with model_type) nor a "
                       f"morphlm checkpoint (config.json + model.safetensors)")
