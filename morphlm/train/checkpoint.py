"""Checkpoint directories: the currency between morphlm verbs (DESIGN.md).

    run/
      model.safetensors        weights of the unwrapped model (never pickle)
      config.json              ModelConfig + format_version + weights_sha256 (integrity hash)
      tokenizer.json           the tokenizer the weights were trained with
      state/optimizer.safetensors, state/trainer.json   enough to resume bit-exactly
      metrics.jsonl            appended by the training loop
      lineage.json             what produced this directory

Crash safety: a save first writes every file into ``run/.staging/``, then atomically writes
``.staging/COMMIT`` (temporary file + rename), then moves the files into place with ``os.replace``
and removes the staging folder. A reader first calls :func:`recover`: a staging folder with a COMMIT
marker is rolled forward (the moves are idempotent), one without is discarded, so a kill at any moment
leaves either the previous checkpoint or the new one — never a mix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..io import write_atomic  # noqa: F401  (re-exported: loop.py and tests use ckpt.write_atomic)
from ..model.config import FORMAT_VERSION, ConfigError, ModelConfig
from ..model.transformer import TransformerLM

STAGING = ".staging"
COMMIT = "COMMIT"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
LINEAGE_FILE = "lineage.json"
OPTIM_FILE = "state/optimizer.safetensors"
TRAINER_FILE = "state/trainer.json"
# optimizer state a verb hands to the first run trained from this directory (growth's carried AdamW moments);
# data for a fresh start, not resumable trainer state (has_trainer_state ignores it)
INITIAL_OPTIM_FILE = "state/initial_optimizer.safetensors"
METRICS_FILE = "metrics.jsonl"

# Explicit upgrade functions: UPGRADES[v] turns a config dict of format v into format v+1.
# Format 1 is the first released format, so there is nothing to upgrade yet.
UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}

# Quantized checkpoints (config.json carries a ``quantization`` block naming its ``method``) are built by
# the loader registered for that method: QUANTIZED_LOADERS[method](run_dir, device, verify) -> model.
# Higher layers register on import (morphlm.compress registers "ternary" and "int8_dynamic"); load_model
# imports the packages named in QUANTIZED_PROVIDERS on first need, so this module never imports them.
QUANTIZED_LOADERS: dict[str, Callable[..., Any]] = {}
QUANTIZED_PROVIDERS: tuple[str, ...] = ("morphlm.compress",)


class CheckpointError(RuntimeError):
    """A checkpoint directory that cannot be used; the message names the problem and the fix."""


# ---------------------------------------------------------------------------- low-level writes
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensors_to_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return st_save(clean, metadata=metadata)


def _read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        return st_load(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as exc:
        raise CheckpointError(f"{what} {path} is unreadable ({exc}); the file is truncated or corrupted — "
                              f"restore it from a backup or retrain") from exc


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """One safetensors file written atomically (side files of a checkpoint: prompts, initial optimizer state)."""
    path = Path(path)
    write_atomic(path, tensors_to_bytes(tensors, metadata))
    return path


def read_tensors(path: str | Path, what: str = "tensor file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; a clear CheckpointError when it is unreadable."""
    path = Path(path)
    tensors = _read_safetensors(path, what)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{what} {path} is unreadable ({exc}); restore it or recreate it") from exc
    return tensors, meta


# ---------------------------------------------------------------------------- staging / recovery
def recover(run_dir: str | Path) -> None:
    """Finish or discard an interrupted save (see module docstring)."""
    run_dir = Path(run_dir)
    stage = run_dir / STAGING
    if not stage.exists():
        return
    marker = stage / COMMIT
    if marker.exists():
        for rel in json.loads(marker.read_text())["files"]:
            src = stage / rel
            if src.exists():
                (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, run_dir / rel)
    shutil.rmtree(stage, ignore_errors=True)


def save_checkpoint(
    run_dir: str | Path,
    model_state: dict[str, torch.Tensor],
    cfg: ModelConfig,
    *,
    tokenizer_json: str | None = None,
    optimizer_tensors: dict[str, torch.Tensor] | None = None,
    trainer_state: dict[str, Any] | None = None,
    lineage: dict[str, Any] | None = None,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically. ``model_state`` must be the unwrapped model's.
    ``extra_config``: extra top-level entries of config.json (a packed model's ``quantization`` block)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    recover(run_dir)
    stage = run_dir / STAGING
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    files: list[str] = []

    def put(rel: str, data: bytes | str) -> None:
        write_atomic(stage / rel, data)
        files.append(rel)

    weights = tensors_to_bytes(model_state, metadata={"format": "pt", "morphlm_format_version": str(FORMAT_VERSION)})
    weights_sha = sha256_bytes(weights)
    put(MODEL_FILE, weights)
    if tokenizer_json is not None:
        put(TOKENIZER_FILE, tokenizer_json)
    if lineage is not None:
        put(LINEAGE_FILE, json.dumps(lineage, indent=2, sort_keys=True, default=str))
    if optimizer_tensors is not None or trainer_state is not None:
        trainer_state = dict(trainer_state or {})
        trainer_state["weights_sha256"] = weights_sha
        if optimizer_tensors is not None:
            optim = tensors_to_bytes(optimizer_tensors)
            trainer_state["optimizer_sha256"] = sha256_bytes(optim)
            put(OPTIM_FILE, optim)
        put(TRAINER_FILE, json.dumps(trainer_state, indent=2, sort_keys=True))
    config = json.loads(cfg.to_json())
    config["weights_sha256"] = weights_sha
    config.update(extra_config or {})
    put(CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True))
    write_atomic(stage / COMMIT, json.dumps({"files": files}))
    recover(run_dir)
    return run_dir


# ---------------------------------------------------------------------------- reading
def has_checkpoint(run_dir: str | Path) -> bool:
    run_dir = Path(run_dir)
    recover(run_dir) if run_dir.exists() else None
    return (run_dir / CONFIG_FILE).exists() and (run_dir / MODEL_FILE).exists()


def check_derived_dirs(src_dir: Path, out_dir: Path, *, role: str, verb: str,
                       error: type[Exception] = CheckpointError) -> None:
    """The checks of every verb that reads one checkpoint directory and writes a new one (grow, extract):
    the ``role`` directory (source, teacher) exists, ``out_dir`` is a different directory, and ``out_dir``
    holds no checkpoint yet (nothing is ever overwritten). Raises ``error`` naming the problem and the fix."""
    if not src_dir.is_dir():
        raise error(f"{role} checkpoint directory {src_dir} does not exist; pass a directory written by "
                    f"`morphlm train --out DIR`")
    if out_dir.resolve() == src_dir.resolve():
        raise error(f"--out must differ from the {role} directory; {verb} never overwrites its {role}")
    if has_checkpoint(out_dir):
        raise error(f"{out_dir} already holds a checkpoint; choose another --out so nothing is overwritten")


def has_trainer_state(run_dir: str | Path) -> bool:
    return has_checkpoint(run_dir) and (Path(run_dir) / TRAINER_FILE).exists()


def read_config(run_dir: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """(ModelConfig, raw dict with format_version and weights_sha256)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise CheckpointError(f"checkpoint directory {run_dir} does not exist; check the path "
                              f"(a run writes one with `morphlm train --out DIR`)")
    recover(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{run_dir} is not a morphlm checkpoint: {CONFIG_FILE} is missing")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); restore it or retrain") from exc
    version = raw.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{run_dir} was written with checkpoint format {version}, newer than this morphlm reads "
            f"(format {FORMAT_VERSION}); upgrade morphlm to load it")
    while version < FORMAT_VERSION:
        if version not in UPGRADES:
            raise CheckpointError(f"{run_dir} has checkpoint format {version} and no upgrade path to "
                                  f"{FORMAT_VERSION} exists; re-export it with an older morphlm")
        raw = UPGRADES[version](raw)
        version += 1
    fields = {k: v for k, v in raw.items() if k not in ("format_version", "weights_sha256", "quantization")}
    try:
        cfg = ModelConfig.from_dict(fields)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    return cfg, raw


def load_state_dict(run_dir: str | Path, verify: bool = True,
                    allow_quantized: bool = False) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    run_dir = Path(run_dir)
    cfg, raw = read_config(run_dir)
    if raw.get("quantization") and not allow_quantized:
        method = raw["quantization"].get("method") if isinstance(raw["quantization"], dict) else None
        raise CheckpointError(f"{run_dir} holds a quantized ({method}) model whose weights are not float tensors; "
                              f"it can be evaluated or served (load_model), but not used as --init, resumed "
                              f"or grown — use the full-precision checkpoint it was made from")
    path = run_dir / MODEL_FILE
    if not path.exists():
        raise CheckpointError(f"{run_dir} has no {MODEL_FILE}; the checkpoint is incomplete — retrain or restore it")
    data = path.read_bytes()
    expected = raw.get("weights_sha256")
    if verify and expected and sha256_bytes(data) != expected:
        raise CheckpointError(
            f"{path} does not match the integrity hash recorded at save time (sha256 {expected[:12]}…): "
            f"the file was truncated or altered. Restore it from a backup or retrain; "
            f"pass verify=False only if you changed it on purpose")
    try:
        state = st_load(data)
    except (SafetensorError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc}); the weights file is corrupted — restore or retrain") from exc
    return state, cfg


def load_model(run_dir: str | Path, device: str | torch.device = "cpu", verify: bool = True) -> TransformerLM:
    """Build the model of a checkpoint directory and load its verified weights (a quantized directory is
    built by its method's registered loader, see QUANTIZED_LOADERS)."""
    _, raw = read_config(run_dir)
    if raw.get("quantization"):
        return _load_quantized(Path(run_dir), raw["quantization"], device, verify)
    state, cfg = load_state_dict(run_dir, verify=verify)
    model = TransformerLM(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{run_dir}: weights do not fit config.json (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}); the config and weights come from different runs")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{run_dir}: tensor {name} has shape {tuple(tensor.shape)} but config.json "
                                  f"implies {tuple(expected[name].shape)}; config and weights do not match")
    model.load_state_dict(state)
    return model.to(device)


def _load_quantized(run_dir: Path, block: Any, device: str | torch.device, verify: bool):
    method = block.get("method") if isinstance(block, dict) else None
    if method not in QUANTIZED_LOADERS:
        import importlib

        for provider in QUANTIZED_PROVIDERS:  # plugin lookup by name: registers the loaders it provides
            importlib.import_module(provider)
    if method not in QUANTIZED_LOADERS:
        raise CheckpointError(f"{run_dir}/config.json declares quantization method {method!r}, which no installed "
                              f"loader reads (known: {sorted(QUANTIZED_LOADERS)}); upgrade morphlm or re-export it")
    return QUANTIZED_LOADERS[method](run_dir, device=device, verify=verify)


def dir_bytes(run_dir: str | Path) -> int:
    """Bytes on disk of the servable files of a checkpoint directory (weights, config, tokenizer,
    lineage): everything except resume state (state/), logs (metrics.jsonl, tensorboard/) and staging."""
    run_dir = Path(run_dir)
    skip = {"state", STAGING, "tensorboard", METRICS_FILE}
    total = 0
    for path in run_dir.rglob("*"):
        rel = path.relative_to(run_dir)
        if rel.parts[0] in skip or not path.is_file():
            continue
        total += path.stat().st_size
    return total


def load_tokenizer_json(run_dir: str | Path) -> str | None:
    path = Path(run_dir) / TOKENIZER_FILE
    return path.read_text(encoding="utf-8") if path.exists() else None


def load_trainer_state(run_dir: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(trainer.json dict, optimizer tensors), checked against the weights they were saved with."""
    run_dir = Path(run_dir)
    recover(run_dir)
    tpath = run_dir / TRAINER_FILE
    if not tpath.exists():
        raise CheckpointError(f"{run_dir} has no {TRAINER_FILE}; it holds weights only and cannot be resumed — "
                              f"start a new run from it instead")
    try:
        state = json.loads(tpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{tpath} is not valid JSON ({exc}); the resume state is corrupted") from exc
    weights_sha = sha256_file(run_dir / MODEL_FILE)
    if state.get("weights_sha256") not in (None, weights_sha):
        raise CheckpointError(f"{run_dir}: {MODEL_FILE} does not belong to {TRAINER_FILE} (hash mismatch); "
                              f"the weights were replaced or altered — restore them or start a new run")
    optim: dict[str, torch.Tensor] = {}
    opath = run_dir / OPTIM_FILE
    if opath.exists():
        if state.get("optimizer_sha256") not in (None, sha256_file(opath)):
            raise CheckpointError(f"{opath} does not match the hash in {TRAINER_FILE}: the optimizer state "
                                  f"was truncated or altered; restore it or start a new run")
        optim = _read_safetensors(opath, "optimizer state")
    return state, optim


def write_initial_optimizer_state(run_dir: str | Path, tensors: dict[str, torch.Tensor], param_groups: list) -> Path:
    """Flattened name-keyed optimizer state (the loop's ``state::FQN::KEY`` tensors + param groups) for the first
    run trained from ``run_dir`` (see INITIAL_OPTIM_FILE)."""
    return write_tensors(Path(run_dir) / INITIAL_OPTIM_FILE, tensors, {"param_groups": json.dumps(param_groups)})


def read_initial_optimizer_state(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], list] | None:
    """(tensors, param groups) written by :func:`write_initial_optimizer_state`, or None when there is none."""
    path = Path(run_dir) / INITIAL_OPTIM_FILE
    if not path.exists():
        return None
    tensors, meta = read_tensors(path, "initial optimizer state")
    return tensors, json.loads(meta.get("param_groups", "[]"))


def read_lineage(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / LINEAGE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def dir_fingerprint(run_dir: str | Path) -> str:
    """Hash identifying a checkpoint (its weights hash), for lineage records."""
    _, raw = read_config(run_dir)
    return raw.get("weights_sha256") or sha256_file(Path(run_dir) / MODEL_FILE)


def total_flops(run_dir: str | Path, include_parents: bool = True) -> float:
    """FLOPs spent to produce a checkpoint, adding its parents' (via lineage.json) when asked."""
    run_dir = Path(run_dir)
    lineage = read_lineage(run_dir) or {}
    own = float(lineage.get("flops", 0.0))
    tpath = run_dir / TRAINER_FILE
    if tpath.exists():
        own = max(own, float(json.loads(tpath.read_text()).get("flops", 0.0)))
    if include_parents:
        for parent in lineage.get("parents", []):
            p = Path(parent.get("path", ""))
            if p.exists():
                own += total_flops(p, include_parents=True)
            else:
                own += float(parent.get("flops", 0.0))
    return own


# ---------------------------------------------------------------------------- opening and recording (every verb)
# A verb that reads a checkpoint directory opens it here (model, tokenizer, what it needs to know about the
# directory) and records it in its own lineage.json with parent_record, so the checks, the error messages and
# the lineage entries are the same for grow, distill, extract, quantize, prompt-tune, search and convert.
@dataclass(frozen=True)
class CheckpointRecord:
    """What a verb needs about a checkpoint directory it reads."""

    path: Path  # resolved
    config: ModelConfig
    fingerprint: str  # its weights' sha256 (dir_fingerprint)
    flops: float  # FLOPs behind it, its parents' included (total_flops)
    lineage: dict[str, Any]  # its lineage.json ({} when it has none)
    data_spec: dict[str, Any]  # the data it was trained on: trainer state's data_spec, else lineage's data, else {}
    quantization: dict[str, Any] | None  # config.json's quantization block of a packed/int8 directory
    tokenizer_json: str | None  # tokenizer.json verbatim (a derived directory copies it byte for byte), or None

    def parent(self, role: str | None = None) -> dict[str, Any]:
        """This directory as an entry of a derived directory's lineage ``parents`` (see :func:`parent_record`)."""
        return _parent_entry(self.path, self.fingerprint, self.flops, role)


def _parent_entry(path: Path, sha256: str, flops: float, role: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": str(path), "sha256": sha256, "flops": float(flops)}
    if role is not None:
        entry["role"] = role
    return entry


def parent_record(run_dir: str | Path, role: str | None = None, *, flops: float | None = None) -> dict[str, Any]:
    """The lineage entry of a parent directory: resolved path, weights sha256, the FLOPs behind it (parents
    included, or ``flops`` when the caller measured them) and, when given, its ``role`` (teacher, init, ...).
    :func:`total_flops` follows these entries to add up the compute behind a model."""
    run_dir = Path(run_dir)
    return _parent_entry(run_dir.resolve(), dir_fingerprint(run_dir),
                         total_flops(run_dir) if flops is None else flops, role)


def saved_data(run_dir: str | Path) -> dict[str, Any]:
    """The data spec a checkpoint was trained on: its trainer state's ``data_spec``, else (grown, extracted or
    quantized directories) the ``data`` of its lineage, else {}."""
    run_dir = Path(run_dir)
    tpath = run_dir / TRAINER_FILE
    saved = json.loads(tpath.read_text(encoding="utf-8")).get("data_spec") if tpath.exists() else None
    return dict(saved or (read_lineage(run_dir) or {}).get("data") or {})


def _check_is_checkpoint(run_dir: Path, role: str, error: type[Exception]) -> None:
    if not run_dir.is_dir():
        raise error(f"{role} checkpoint directory {run_dir} does not exist; pass a directory written by "
                    f"`morphlm train --out DIR`")
    if not has_checkpoint(run_dir):
        raise error(f"{run_dir} is not a checkpoint directory ({CONFIG_FILE} or {MODEL_FILE} is missing); pass a "
                    f"directory written by `morphlm train --out DIR` (or convert a Hugging Face one with "
                    f"`morphlm convert`)")


def read_record(run_dir: str | Path, *, role: str = "checkpoint",
                error: type[Exception] = CheckpointError) -> CheckpointRecord:
    """The :class:`CheckpointRecord` of a checkpoint directory, without loading its weights."""
    run_dir = Path(run_dir)
    _check_is_checkpoint(run_dir, role, error)
    cfg, raw = read_config(run_dir)
    quant = raw.get("quantization")
    return CheckpointRecord(path=run_dir.resolve(), config=cfg, fingerprint=dir_fingerprint(run_dir),
                            flops=total_flops(run_dir), lineage=read_lineage(run_dir) or {},
                            data_spec=saved_data(run_dir), quantization=quant if isinstance(quant, dict) else None,
                            tokenizer_json=load_tokenizer_json(run_dir))


def open_tokenizer(run_dir: str | Path, need: str | None = None, *, error: type[Exception] = CheckpointError):
    """The Tokenizer of a checkpoint directory. A directory without tokenizer.json gives None, or, when the
    caller ``need``s it (``need`` says what for), one error naming the directory, the reason and the fix."""
    from ..data.tokenizer import Tokenizer

    tj = load_tokenizer_json(run_dir)
    if tj is None:
        if need is None:
            return None
        raise error(f"{run_dir} has no {TOKENIZER_FILE}; {need}. Use the directory the model was trained into "
                    f"(`morphlm train --out DIR` writes the tokenizer there)")
    return Tokenizer.from_json_str(tj)


def open_checkpoint(run_dir: str | Path, *, need_tokenizer: str | None = None, device: str | torch.device = "cpu",
                    verify: bool = True, role: str = "checkpoint", error: type[Exception] = CheckpointError):
    """``(model, tokenizer, record)`` of a checkpoint directory: the one way every verb opens its input.

    The model is built as :func:`load_model` builds it (quantized directories through their loaders); the
    tokenizer is None for a directory without tokenizer.json unless ``need_tokenizer`` (what the caller needs
    it for) is given, which makes its absence an error; ``record`` is the :class:`CheckpointRecord` (path,
    fingerprint, FLOPs, lineage, data spec). A missing directory or one that is not a checkpoint raises
    ``error`` (``role`` names the directory in the message: source, teacher, ...)."""
    run_dir = Path(run_dir)
    _check_is_checkpoint(run_dir, role, error)
    tokenizer = open_tokenizer(run_dir, need_tokenizer, error=error)
    model = load_model(run_dir, device=device, verify=verify)
    return model, tokenizer, read_record(run_dir, role=role, error=error)
