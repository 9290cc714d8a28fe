"""Reading metrics.jsonl and drawing loss curves (PNG, matplotlib's Agg backend): `morphlm plot`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from . import checkpoint as ckpt

X_AXES = ("step", "tokens", "flops")


class PlotError(ValueError):
    """A run that cannot be plotted (not a directory, no metrics.jsonl, no loss records)."""


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl ([] if it has none); a malformed record is a named error
    (:func:`checkpoint.read_metrics`)."""
    return ckpt.read_metrics(run_dir)


def run_labels(run_dirs: Sequence[str | Path]) -> dict[str, Path]:
    """A legend label per run: its folder name, or as many trailing path parts as tell the runs apart."""
    paths = [Path(r) for r in run_dirs]
    for depth in range(1, max((len(p.resolve().parts) for p in paths), default=1) + 1):
        labels = ["/".join(p.resolve().parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return dict(zip(labels, paths))
    raise PlotError(f"the same run is named twice: {[str(p) for p in paths]}; pass each run once")


def plot_runs(run_dirs: Sequence[str | Path], out_png: str | Path, *, x: str = "step",
              title: str | None = None) -> Path:
    """`morphlm plot`: training and validation loss of several runs (checkpoint directories with a
    metrics.jsonl) on one axis against ``x`` (step | tokens | flops), written to ``out_png``."""
    if not run_dirs:
        raise PlotError("no runs given; pass one or more run directories (each with a metrics.jsonl)")
    if x not in X_AXES:
        raise PlotError(f"--x {x!r} is not an axis; use one of {', '.join(X_AXES)}")
    for r in run_dirs:
        p = Path(r)
        if not p.is_dir():
            raise PlotError(f"{p} is not a directory; pass run directories written by a training verb (--out DIR)")
        if not (p / ckpt.METRICS_FILE).is_file():
            raise PlotError(f"{p} has no {ckpt.METRICS_FILE}; pass a run directory a training verb wrote (train, "
                            f"distill, quantize --max-steps N, ...)")
    return plot_curves(run_labels(run_dirs), out_png, x=x, title=title)


def plot_curves(runs: dict[str, str | Path], out_png: str | Path, *, x: str = "step",
                title: str | None = None) -> Path:
    """Training loss (thin) and validation loss (markers) of one or more runs against ``x``
    (``step``, ``tokens`` or ``flops``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    drawn = 0
    try:
        for label, run_dir in runs.items():
            rows = read_metrics(run_dir)
            tr = [(r[x], r["loss"]) for r in rows if "loss" in r and x in r]
            va = [(r[x], r["val_loss"]) for r in rows if "val_loss" in r and x in r]
            if not tr and not va:
                raise PlotError(f"{run_dir}: metrics.jsonl has no loss records with {x!r}; nothing to plot for it")
            if tr:
                line, = ax.plot(*zip(*tr), lw=1.0, alpha=0.8, label=f"{label} train")
                color = line.get_color()
            else:
                color = None
            if va:
                ax.plot(*zip(*va), "o-", ms=4, color=color, label=f"{label} val")
            drawn += 1
        ax.set_xlabel({"flops": "training FLOPs", "tokens": "tokens", "step": "step"}.get(x, x))
        ax.set_ylabel("loss (nats/token)")
        if x == "flops":
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(title or f"loss of {drawn} run{'s' if drawn != 1 else ''}")
        return save_figure(fig, out_png)
    finally:
        plt.close(fig)


def save_figure(fig, out_png: str | Path, **savefig_kw) -> Path:
    """Lay out ``fig`` and write it to ``out_png`` (creating its folder); every plot of the package ends here."""
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, **savefig_kw)
    return out_png
