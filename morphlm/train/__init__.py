"""Training: ``fit(model, loss_fn, data, args, callbacks)`` — the one loop — with its arguments
(:class:`TrainArgs`, the single source of training defaults for the CLI, recipes and Python), evaluation,
checkpoint directories (save, load, open, lineage records) and the run assembly behind ``morphlm train``.

Submodules (``checkpoint``, ``loop``, ``optim``, ``flops``, ``parallel``, ``run``, ``metrics``, ``latency``)
import each other as modules (``from . import checkpoint as ckpt``), never names from this package, so
importing any one of them first works.
"""

from .checkpoint import (CheckpointError, CheckpointRecord, has_checkpoint, load_model, load_state_dict,
                         open_checkpoint, open_tokenizer, parent_record, read_config, read_lineage, read_record,
                         save_checkpoint, total_flops)
from .loop import FitResult, StopScope, TrainingDiverged, evaluate, fit, model_loss
from .optim import TrainArgs, lr_at
from .run import DataSpec, RunSpec, build_spec, eval_run, train_run

__all__ = [
    "CheckpointError", "CheckpointRecord", "DataSpec", "FitResult", "RunSpec", "StopScope", "TrainArgs",
    "TrainingDiverged", "build_spec", "eval_run", "evaluate", "fit", "has_checkpoint", "load_model",
    "load_state_dict", "lr_at", "model_loss", "open_checkpoint", "open_tokenizer", "parent_record", "read_config",
    "read_lineage", "read_record", "save_checkpoint", "total_flops", "train_run",
]
# TrainingInterrupted (raised by fit() when a run is stopped; defined in loop.py) is exported here and from
# morphlm/__init__.py next to TrainingDiverged.
