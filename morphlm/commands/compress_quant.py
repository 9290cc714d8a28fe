"""`morphlm quantize`: TernaryBERT (packed 2-bit, optional distillation-aware QAT) or PyTorch's dynamic int8."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .base import _setup_logging, app, friendly
from .options import verb, with_config


@app.command(cls=verb({"--steps": "--max-steps"}))
@with_config
@friendly
def quantize(
    src: Path = typer.Argument(..., help="Full-precision checkpoint directory (the teacher for --max-steps > 0)."),
    method: str = typer.Option("ternary", help="ternary (TernaryBERT, packed 2 bits/weight) | int8 (PyTorch "
                                               "dynamic int8 baseline)."),
    out: Path = typer.Option(..., help="Checkpoint directory to write (must be new or empty)."),
    weights: str = typer.Option("twn", help="ternary: twn (threshold 0.7·mean|w|) | lat (loss-aware, Adam's "
                                            "second moment as the diagonal)."),
    steps: int = typer.Option(0, "--max-steps", help="ternary: distillation-aware QAT steps from SRC (0 = "
                                                      "post-training ternarization only)."),
    task_train: Optional[Path] = typer.Option(None, help="QAT data: labelled TSV/CSV/JSONL (default: SRC's own data)."),
    task_val: Optional[Path] = typer.Option(None, help="QAT validation file (with --task-train)."),
    lr: float = typer.Option(5e-5, help="QAT peak learning rate (linear warm-up over 10% of steps, then decay)."),
    batch_size: Optional[int] = typer.Option(None, help="QAT batch size (default: SRC's)."),
    seq_len: Optional[int] = typer.Option(None, help="QAT sequence length (default: SRC's)."),
    act_bits: int = typer.Option(8, help="ternary: activation bits (0 = full-precision activations)."),
    embedding: str = typer.Option("row", help="ternary: word embedding row | layer (-wise scales) | fp (keep it)."),
    temperature: float = typer.Option(1.0, help="QAT: temperature of the soft cross-entropy on logits."),
    scale_dtype: str = typer.Option("float32", help="ternary: dtype of the stored scales (float32 | float16)."),
    rest_dtype: str = typer.Option("float32", help="ternary: dtype of the tensors kept in full precision "
                                                   "(position embeddings, norms, biases, classifier): float32 | "
                                                   "float16."),
    packing: str = typer.Option("2bit", help="ternary: 2bit (4 weights per byte) | base3 (5 per byte, 1.6 bits "
                                             "per weight, 20% fewer code bytes; same model, same accuracy)."),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="QAT device: auto | cpu | cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Quantize a checkpoint. ternary: TWN/LAT ternary weights (layer-wise; word embedding row-wise), 8-bit
    activations, optional distillation-aware QAT from SRC, then a real packed artifact (2 bits per weight, or 1.6
    with --packing base3, + scales; size = bytes on disk). int8: dynamic int8 quantization of every Linear (torchao). Evaluate the
    result with `morphlm eval OUT [--latency]`."""
    _setup_logging()
    from ..compress.quantize import Int8Config, quantize_checkpoint
    from ..compress.ternary import TernaryConfig

    configs = {"ternary": lambda: TernaryConfig(weights=weights, act_bits=act_bits or None, embedding=embedding),
               "int8": Int8Config}
    config = configs[method]() if method in configs else None  # applied through quantize_(model, config)
    summary = quantize_checkpoint(
        src, out, method, config=config, steps=steps,
        task_train=str(task_train) if task_train else None, task_val=str(task_val) if task_val else None,
        lr=lr, batch_size=batch_size, seq_len=seq_len, temperature=temperature, seed=seed, device=device,
        scale_dtype=scale_dtype, rest_dtype=rest_dtype, packing=packing)
    if as_json:
        typer.echo(json.dumps(summary, default=str))
        return
    size = summary["size"]
    msg = (f"{method}: {src} → {out}; weights {size['fp32_weights_bytes']:,} → {size['packed_weights_bytes']:,} bytes "
           f"({size['weights_ratio']:.2f}× smaller; servable dir {size['dir_ratio']:.2f}×)")
    if "qat" in summary:
        q = summary["qat"]
        msg += f"; QAT {q['steps']} steps, {q['flops']:.3g} FLOPs"
        if q.get("val_loss") is not None:
            msg += f", distillation val_loss {q['val_loss']:.4f}"
    if "drift" in summary:
        d = summary["drift"]
        msg += f"; drift: cosine {d['cosine']:.3f} with the float model ({d['batch']})"
    typer.echo(msg)  # a ternary --max-steps 0 run's warning was logged (stderr) by quantize_checkpoint
