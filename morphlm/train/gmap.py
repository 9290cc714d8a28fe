"""G-MAP runs and checkpoints: the frozen general model is a recorded parent, never a copy.

A G-MAP run (``morphlm train --gmap-memory GENERAL_DIR --gmap-layers 5,11 --gmap-fusion chunk_gated``, see
:mod:`morphlm.model.gmap`) trains a domain model whose chosen layers read GENERAL_DIR's hidden states. The
checkpoint it writes holds only the domain model and its fusion modules; its lineage.json lists GENERAL_DIR
as a parent with ``role: gmap_memory`` and its weights hash. Opening the checkpoint (``load_model``), resuming
it, or fine-tuning from it (``--init`` a G-MAP directory: the task run keeps the same memory) re-opens that
parent and refuses a missing one or one whose weights changed. Domain-adaptive pretraining and task
fine-tuning both run through the one training loop.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from ..model.config import ConfigError, ModelConfig
from ..model.gmap import check_memory_model
from . import checkpoint as ckpt
from .checkpoint import GMAP_ROLE, MemoryRef, load_gmap, recorded_memory  # noqa: F401  (re-exported)
from .checkpoint import check_gmap_memory as _check_memory_dir


def open_memory(ref: MemoryRef, owner: str | Path, device: str | torch.device = "cpu"):
    """The frozen general model of ``owner`` (checked against the record), loaded and in eval mode."""
    _check_memory_dir(ref, owner)
    return ckpt.load_model(ref.path, device=device).eval()


@dataclasses.dataclass
class GMAPPlan:
    """What a G-MAP training run needs, resolved and checked before anything is written."""

    memory: MemoryRef
    tokenizer_json: str | None  # the frozen model's tokenizer (the run's when it has no --init or resume)
    same_as_init: bool  # the memory is the --init directory (one lineage parent, both roles)


def plan(spec, resuming_dir: Path | None) -> GMAPPlan | None:
    """Resolve and check a run spec's G-MAP settings (None for a plain run). The memory is ``spec.gmap_memory``,
    else the one the resumed run or the ``--init`` G-MAP checkpoint records (a task fine-tuning run keeps it).
    Raises ConfigError / CheckpointError naming the problem; writes nothing."""
    cfg: ModelConfig = spec.model
    if not cfg.gmap_layer_ids:  # a plain run (from a G-MAP --init too: its domain weights, without the memory)
        if spec.gmap_memory is not None:
            raise ConfigError("--gmap-memory names the frozen general model of a G-MAP run; also pass --gmap-layers "
                              "(the domain layers that read it, e.g. 5,11) and optionally --gmap-fusion")
        return None
    recorded = recorded_in = None
    for source in (resuming_dir, spec.init):
        if source is not None and ckpt.has_checkpoint(source):
            recorded, recorded_in = recorded_memory(source), source
            if recorded is not None:
                break
    if spec.gmap_memory is None and recorded is None:
        raise ConfigError(f"gmap_layers={cfg.gmap_layers!r} makes a G-MAP model, which needs its frozen general "
                          f"model: pass --gmap-memory GENERAL_DIR")
    if spec.gmap_memory is not None:
        path = Path(spec.gmap_memory)
        ckpt.read_config(path)  # a clear error for a path that is not a checkpoint
        ref = MemoryRef(path.resolve(), ckpt.dir_fingerprint(path))
        if recorded is not None and (recorded.path != ref.path or recorded.sha256 != ref.sha256):
            raise ConfigError(f"--gmap-memory {path} is not the frozen model {recorded_in} was trained with "
                              f"({recorded.path}, sha256 {recorded.sha256[:12]}…); drop --gmap-memory to keep that "
                              f"one, or start a new run")
    else:
        ref = recorded
        _check_memory_dir(ref, recorded_in)
    general_cfg = ckpt.read_config(ref.path)[0]
    check_memory_model(cfg, general_cfg, where=f"the frozen general model {ref.path}")
    memory_tok = ckpt.load_tokenizer_json(ref.path)
    for other, what in ((resuming_dir, "the resumed run"), (spec.init, "the --init checkpoint")):
        if other is None or not ckpt.has_checkpoint(other):
            continue
        tok = ckpt.load_tokenizer_json(other)
        if tok is not None and memory_tok is not None and tok != memory_tok:
            raise ConfigError(f"the frozen general model {ref.path} and {what} {other} use different tokenizers; "
                              f"G-MAP feeds both models the same token ids — use a general model of the same "
                              f"tokenizer (start the domain model from it with --init)")
    same = spec.init is not None and Path(spec.init).resolve() == ref.path
    return GMAPPlan(ref, memory_tok, same)


def lineage_parents(gplan: GMAPPlan, init: str | None) -> list[dict[str, Any]]:
    """The lineage parents of a G-MAP run: the frozen memory (role gmap_memory) and the --init directory; one
    entry (marked ``init``) when they are the same directory, so its compute is counted once."""
    memory = ckpt.parent_record(gplan.memory.path, role=GMAP_ROLE)
    if gplan.same_as_init:
        return [{**memory, "init": True}]
    return ([ckpt.parent_record(init)] if init else []) + [memory]


def recorded_memory_layers(out_dir: str | None, init: str | None) -> int | None:
    """The layer count of the frozen model a resumed run (``out_dir``) or a G-MAP ``init`` records (None when
    neither records one); a recorded model that is missing or altered is refused here."""
    for source in (out_dir if out_dir and ckpt.has_trainer_state(out_dir) else None, init):
        if source is not None and ckpt.has_checkpoint(source):
            ref = recorded_memory(source)
            if ref is not None:
                _check_memory_dir(ref, source)
                return ckpt.read_config(ref.path)[0].n_layers
    return None
