"""Reading metrics.jsonl and drawing loss curves (PNG, matplotlib's Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl ([] if absent), read by the checkpoint store's checked reader
    (a malformed record is a CheckpointError naming the file and the line)."""
    from .checkpoint import read_metrics as _read

    return _read(run_dir)


def plot_curves(runs: dict[str, str | Path], out_png: str | Path, *, x: str = "step",
                title: str | None = None) -> Path:
    """Training loss (thin) and validation loss (markers) of one or more runs against ``x``
    (``step``, ``tokens`` or ``flops``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for label, run_dir in runs.items():
        rows = read_metrics(run_dir)
        tr = [(r[x], r["loss"]) for r in rows if "loss" in r and x in r]
        va = [(r[x], r["val_loss"]) for r in rows if "val_loss" in r and x in r]
        if tr:
            line, = ax.plot(*zip(*tr), lw=1.0, alpha=0.8, label=f"{label} train")
            color = line.get_color()
        else:
            color = None
        if va:
            ax.plot(*zip(*va), "o-", ms=4, color=color, label=f"{label} val")
    ax.set_xlabel({"flops": "training FLOPs", "tokens": "tokens", "step": "step"}.get(x, x))
    ax.set_ylabel("loss (nats/token)")
    if x == "flops":
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "loss")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
