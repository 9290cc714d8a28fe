"""Assembling runs: corpus → tokenizer → token store → batches → model → fit().

These are the typed functions behind ``morphlm train`` and ``morphlm eval``; the CLI only parses
arguments. A run is described by a :class:`RunSpec` (model config + data + training arguments), which
can come from a preset, a recipe YAML and command-line overrides, in that order of precedence.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import (ClassificationBatches, LMBatches, MLMBatches, Tokenizer, load_task, prepare_lm_store)
from ..model import ModelConfig, TransformerLM
from ..model.config import GMAP_DEFAULTS, ConfigError
from ..model.gmap import GMAPModel
from ..model.moe import weights_kind_hint
from . import checkpoint as ckpt
from . import flops as flops_mod
from .expert_parallel import check_expert_parallel
from .gmap import GMAPPlan, open_memory, recorded_memory_layers
from .gmap import lineage_parents as gmap_lineage_parents
from .gmap import plan as gmap_plan
from .loop import FitResult, TrainArgs, evaluate, fit, model_loss, resolve_device
from .memory import check_fits
from .optim import LoadOptimizerState, _unflatten_optimizer

log = logging.getLogger("morphlm.run")

LR_SCHEDULES = ("cosine", "linear", "constant")  # TrainArgs.schedule

@dataclass
class DataSpec:
    corpus: str = "stdlib"
    max_bytes: int | None = 4_000_000
    seq_len: int = 128
    batch_size: int = 16
    val_fraction: float = 0.05
    eval_batches: int = 8
    # classification fine-tuning (head == "cls"): labelled files instead of a corpus
    task_train: str | None = None
    task_val: str | None = None


@dataclass
class RunSpec:
    model: ModelConfig
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainArgs = field(default_factory=TrainArgs)
    init: str | None = None  # start from this checkpoint's weights (fine-tuning)
    schedule: str | None = None  # a progressive training schedule (morphlm.grow's registry); None -> plain fit
    schedule_opts: dict[str, Any] = field(default_factory=dict)  # its options (source, stages, l_b, ...)
    gmap_memory: str | None = None  # G-MAP: the frozen general model's checkpoint (train/gmap.py)


def parse_value(value: Any, like: Any, key: str) -> Any:
    """Parse a command-line string to the type of the field it overrides (``like``: its current value;
    None when unknown: then int, float, none/null or the string itself). A numeric field takes only a finite
    number (a whole one for an integer field); ``abc``, ``nan`` and ``inf`` are refused with a ConfigError."""
    if not isinstance(value, str) or isinstance(like, str):
        return value
    low = value.strip().lower()
    if isinstance(like, bool):
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}={value!r} is not a boolean; use true or false")
    if low in ("none", "null"):
        return None
    number: int | float | None = None
    for cast in (int, float):
        try:
            number = cast(value)
            break
        except ValueError:
            continue
    if number is None:
        if isinstance(like, (int, float)):
            raise ConfigError(f"{key}={_clip(value)} is not a number; give {key} a number like {like!r}")
        return value
    if not math.isfinite(number):
        raise ConfigError(f"{key}={_clip(value)} is not a finite number; give {key} a finite value"
                          + (f" like {like!r}" if like is not None else ""))
    if isinstance(like, float):
        return float(number)
    if isinstance(like, int) and isinstance(number, float):
        if not number.is_integer():
            raise ConfigError(f"{key}={_clip(value)} must be a whole number (like {like!r})")
        return int(number)
    return number


def _clip(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def build_spec(preset: str | None = None, recipe: str | Path | None = None,
               overrides: dict[str, Any] | None = None) -> RunSpec:
    """Preset < recipe < overrides. Override keys may name any ModelConfig, DataSpec or TrainArgs field, and
    ``init``, ``lr_schedule`` (TrainArgs.schedule), ``growth_schedule`` + ``growth_schedule_opts`` (a progressive
    schedule from growth's registry). ``schedule`` is the LR schedule when it names one (cosine, linear,
    constant), else the growth schedule (its older meaning). Derived model fields follow the overrides."""
    model_fields: dict[str, Any] = {}
    data_fields: dict[str, Any] = {}
    train_fields: dict[str, Any] = {}
    init = gmap_memory = None
    schedule, schedule_opts = None, {}
    base = preset
    if recipe is not None:
        path = Path(recipe)
        if not path.exists():
            raise ConfigError(f"recipe {path} does not exist; pass a YAML file with model/data/train sections")
        import yaml

        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"recipe {path} is not valid YAML: {exc}") from exc
        if not isinstance(doc, dict):
            raise ConfigError(f"recipe {path} must be a mapping with model/data/train sections")
        unknown = set(doc) - {"model", "data", "train", "init", "name", "description", "schedule"}
        if unknown:
            raise ConfigError(f"recipe {path} has unknown section(s) {sorted(unknown)}; use model, data, train, "
                              f"init, schedule")
        sched = doc.get("schedule")
        if isinstance(sched, str):
            schedule = sched
        elif isinstance(sched, dict):
            schedule_opts = dict(sched)
            schedule = schedule_opts.pop("name", None)
        elif sched is not None:
            raise ConfigError(f"recipe {path}: schedule must be a name or a mapping with name: and its options")
        model_fields.update(doc.get("model") or {})
        data_fields.update(doc.get("data") or {})
        train_fields.update(doc.get("train") or {})
        init = doc.get("init")
        base = model_fields.pop("preset", None) or base
    model_names = {f.name for f in dataclasses.fields(ModelConfig) if f.init}
    data_names = {f.name for f in dataclasses.fields(DataSpec)}
    train_names = {f.name for f in dataclasses.fields(TrainArgs)}
    for key, value in (overrides or {}).items():
        key = key.replace("-", "_")
        if value is None:
            continue
        if key == "init":
            init = value
        elif key == "gmap_memory":
            gmap_memory = str(value)
        elif key == "lr_schedule" or (key == "schedule" and value in LR_SCHEDULES):
            train_fields["schedule"] = value  # TrainArgs.schedule, the LR schedule (`--lr-schedule`)
        elif key in ("growth_schedule", "schedule"):  # `schedule` naming anything else: the growth schedule
            schedule = value
        elif key in ("growth_schedule_opts", "schedule_opts"):
            schedule_opts.update(value)
        elif key in model_names:
            model_fields[key] = value
        elif key in data_names:
            data_fields[key] = value
        elif key in train_names:
            train_fields[key] = value
        else:
            raise ConfigError(f"unknown setting {key!r}; settable fields are model: {sorted(model_names)}, "
                              f"data: {sorted(data_names)}, train: {sorted(train_names)}")
    if base is None and init is not None and ckpt.has_checkpoint(init):
        # fine-tuning without a preset: the --init checkpoint's own model (a converted one's too, e.g. hf-bert)
        base_model = ckpt.read_config(init)[0]
    else:
        base_model = ModelConfig.from_name(base or "tiny")
    base_cfg = base_model.to_dict()
    if model_fields.get("gmap_layers") and "gmap_memory_layers" not in model_fields:  # G-MAP: the frozen depth
        depth = (ckpt.read_config(gmap_memory)[0].n_layers if gmap_memory is not None
                 else recorded_memory_layers(train_fields.get("out_dir"), init))  # a resume or a G-MAP --init
        if depth is not None:
            model_fields["gmap_memory_layers"] = depth
    for key, value in model_fields.items():
        # a plain config.json omits the gmap_* fields: their defaults give the type (--gmap-layers 1 is a string)
        model_fields[key] = parse_value(value, base_cfg.get(key, GMAP_DEFAULTS.get(key)), key)
    # derived fields (n_kv_heads, d_ff, ...) follow the overrides unless the base or the overrides set them
    cfg = base_model.derive(**model_fields)
    dspec_defaults = DataSpec()
    data_fields = {k: parse_value(v, getattr(dspec_defaults, k), k) for k, v in data_fields.items()}
    unknown = set(data_fields) - data_names
    if unknown:
        raise ConfigError(f"unknown data setting(s) {sorted(unknown)}; known: {sorted(data_names)}")
    targs_defaults = TrainArgs()
    train_fields = {k: parse_value(v, getattr(targs_defaults, k), k) for k, v in train_fields.items()}
    unknown = set(train_fields) - train_names
    if unknown:
        raise ConfigError(f"unknown train setting(s) {sorted(unknown)}; known: {sorted(train_names)}")
    dspec = DataSpec(**data_fields)
    if dspec.seq_len > cfg.max_seq_len:
        raise ConfigError(f"seq_len={dspec.seq_len} exceeds the model's max_seq_len={cfg.max_seq_len}; "
                          f"lower --seq-len or raise max_seq_len")
    targs = TrainArgs(**train_fields)
    try:
        targs.validate()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if "warmup_steps" in train_fields and targs.warmup_steps > targs.horizon:
        raise ConfigError(f"warmup_steps={targs.warmup_steps} is longer than the LR schedule "
                          f"({targs.horizon} steps: schedule_steps, else max_steps), so the learning rate would never "
                          f"reach lr={targs.lr:g}; use warmup_steps <= {targs.horizon} or a longer --schedule-steps")
    return RunSpec(model=cfg, data=dspec, train=targs, init=init, schedule=schedule, schedule_opts=schedule_opts,
                   gmap_memory=gmap_memory)


def saved_data_spec(run_dir: str | Path) -> DataSpec:
    """The data a checkpoint was trained on: its trainer state's data spec, else (grown, extracted or
    converted directories) the ``data`` recorded in its lineage, else the defaults."""
    saved = ckpt.saved_data(run_dir)
    return DataSpec(**{k: v for k, v in saved.items() if k in {f.name for f in dataclasses.fields(DataSpec)}})


def _check_vocab(tokenizer: Tokenizer, cfg: ModelConfig, where: str) -> None:
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ckpt.CheckpointError(
            f"{where}: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
            f"{cfg.vocab_size}; ids past {cfg.vocab_size - 1} would index outside the embedding. Use the "
            f"tokenizer the model was trained with, or set vocab_size >= {tokenizer.vocab_size}")


def build_data(spec: RunSpec, tokenizer: Tokenizer | None = None):
    """(tokenizer, batch source, fingerprints) for a run spec."""
    cfg, d, seed = spec.model, spec.data, spec.train.seed
    if cfg.head == "cls":
        if not d.task_train or not d.task_val:
            raise ConfigError("a classifier (head=cls) trains on labelled files: pass --task-train and --task-val "
                              "(TSV/CSV/JSONL with a label column)")
        if tokenizer is None:
            raise ConfigError("classification fine-tuning needs a tokenizer: pass --init DIR of a pretrained "
                              "checkpoint (its tokenizer.json is used)")
        task = load_task(d.task_train, d.task_val)
        if task.n_classes != cfg.n_classes:
            raise ConfigError(f"the task has {task.n_classes} classes {task.label_names} but the model has "
                              f"n_classes={cfg.n_classes}; pass --n-classes {task.n_classes}")
        data = ClassificationBatches(task.train, task.val, tokenizer, d.batch_size, d.seq_len, seed=seed)
        fps = {"data_fingerprint": f"task:{Path(d.task_train).name}:{len(task.train)}",
               "tokenizer_fingerprint": tokenizer.fingerprint()}
        return tokenizer, data, fps
    tokenizer, store = prepare_lm_store(d.corpus, cfg.vocab_size, tokenizer=tokenizer, max_bytes=d.max_bytes,
                                        val_fraction=d.val_fraction, seed=0)
    _check_vocab(tokenizer, cfg, f"corpus {d.corpus}")
    if cfg.head == "mlm":
        data = MLMBatches(store, d.batch_size, d.seq_len, mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size,
                          special_ids=tokenizer.special_ids,
                          seed=seed, eval_batches=d.eval_batches)
    else:
        data = LMBatches(store, d.batch_size, d.seq_len, seed=seed, eval_batches=d.eval_batches)
    fps = {"data_fingerprint": store.meta.get("corpus_fingerprint"),
           "tokenizer_fingerprint": tokenizer.fingerprint()}
    return tokenizer, data, fps


def _with_growth_masks(cfg: ModelConfig, other: ModelConfig) -> ModelConfig:
    """``cfg`` with the growth masks of ``other`` (the init or saved run's config) when ``cfg`` names none: masks
    are part of the weights' function, not a setting a run spec repeats."""
    if other.msg_ramp_steps is None or cfg.msg_ramp_steps is not None:
        return cfg
    return cfg.replace(msg_ramp_steps=other.msg_ramp_steps)


def _load_init(model: TransformerLM, init_dir: str, state=None) -> Tokenizer | None:
    """Copy every weight of ``init_dir`` whose name and shape fit (the body); new heads stay freshly initialised."""
    if state is None:
        state, src_cfg = ckpt.load_state_dict(init_dir)
    else:
        src_cfg = ckpt.read_config(init_dir)[0]
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    # a Switch Attention router a full-attention source lacks keeps its init (the model starts as the source)
    body_missing = [k for k in own if k.startswith(("blocks.", "tok_emb", "expert_pools.")) and k not in fitting
                    and ".attn.switch." not in k]
    if body_missing:
        hint = weights_kind_hint(body_missing, [k for k in state if k not in own])
        raise ckpt.CheckpointError(f"--init {init_dir}: its weights do not fit this model ({body_missing[:3]} ...); "
                                   f"use the same d_model/n_layers/n_heads as the checkpoint ({src_cfg.name!r}; "
                                   f"without --preset, --init takes the checkpoint's own config){hint}")
    model.load_state_dict(fitting, strict=False)
    return ckpt.open_tokenizer(init_dir)


def train_run(spec: RunSpec, callbacks=()) -> FitResult:
    """Train (or resume) the run described by ``spec``; writes a checkpoint directory at spec.train.out_dir,
    holding its writer lock for the whole run (a second writer of the same directory fails at once).

    ``--init DIR`` copies DIR's weights, keeps the growth masks it carries (an MSG-grown directory: the new run
    continues their ramp) and, on a fresh start, loads the initial optimizer state DIR holds (the AdamW moments
    a growth verb carried over). A progressive ``spec.schedule`` is run by the growth package
    (``morphlm.grow.schedules.run_from_spec``; ``morphlm train --growth-schedule`` dispatches there), not here."""
    out = spec.train.out_dir
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 writes
    # before the output directory is claimed: a bad --expert-parallel leaves nothing behind
    check_expert_parallel(spec.model, spec.train.expert_parallel, parallel=spec.train.parallel)
    resuming = out and ckpt.has_trainer_state(out) and spec.train.resume == "auto"
    gplan = gmap_plan(spec, Path(out) if resuming else None)  # G-MAP settings and frozen model, checked first
    if out and main_rank:
        ckpt.claim_output_dir(out, "train", inputs=[("--init", spec.init)], resume=spec.train.resume == "auto")
    with ckpt.writer_lock(out) if out and main_rank else contextlib.nullcontext():
        return _train_run(spec, callbacks, gplan)


def _train_run(spec: RunSpec, callbacks, gplan: GMAPPlan | None = None) -> FitResult:
    """The body of :func:`train_run`, run while the writer lock is held."""
    if spec.schedule:
        raise ConfigError(f"train_run does not run progressive schedules ({spec.schedule!r}); run the spec with "
                          f"morphlm.grow.schedules.run_from_spec(spec), as `morphlm train --growth-schedule` does")
    args = spec.train
    if args.check_memory and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # before the data and the model are built: a run that cannot fit fails in a moment, with the numbers
        # (fit() checks again with the real model, on every rank)
        check_fits(spec.model, per_process_batch=spec.data.batch_size, seq_len=spec.data.seq_len,
                   micro_batch=args.micro_batch_size, device=resolve_device(args.device), precision=args.precision,
                   where=f"training this {spec.model.name!r} model")
    out = Path(args.out_dir) if args.out_dir else None
    tokenizer = None
    resuming = out is not None and ckpt.has_trainer_state(out) and args.resume == "auto"
    init_state = None
    if spec.init:
        init_state, init_cfg = ckpt.load_state_dict(spec.init)
        spec = dataclasses.replace(spec, model=_with_growth_masks(spec.model, init_cfg))
    if resuming:
        tokenizer = ckpt.open_tokenizer(out)
        saved_cfg, _ = ckpt.read_config(out)
        spec = dataclasses.replace(spec, model=_with_growth_masks(spec.model, saved_cfg))
        if saved_cfg.to_dict() != spec.model.to_dict():
            saved, asked = saved_cfg.to_dict(), spec.model.to_dict()  # a dense config.json has no moe_* keys
            diff = {k: (saved.get(k), asked.get(k)) for k in sorted(set(saved) | set(asked))
                    if saved.get(k) != asked.get(k)}
            raise ckpt.CheckpointError(f"{out} holds a run of a different model (saved vs asked: {diff}); "
                                       f"resume with the same settings or choose another --out")
    general = open_memory(gplan.memory, gplan.memory.path) if gplan is not None else None  # before the seed
    torch.manual_seed(args.seed)
    model = TransformerLM(spec.model) if general is None else GMAPModel(spec.model, general)
    if spec.init:
        init_tok = _load_init(model, spec.init, init_state)
        tokenizer = tokenizer or init_tok
        carried = None if resuming else ckpt.read_initial_optimizer_state(spec.init)
        if carried is not None:
            callbacks = [*callbacks, LoadOptimizerState(_unflatten_optimizer(*carried))]
    if tokenizer is None and gplan is not None and gplan.tokenizer_json is not None:
        tokenizer = Tokenizer.from_json_str(gplan.tokenizer_json)  # G-MAP: the frozen model's token ids
    tokenizer, data, fps = build_data(spec, tokenizer)
    lineage = {"verb": "train", "preset": spec.model.name,
               "data": dataclasses.asdict(spec.data), "parents": []}
    step_flops = None
    if gplan is not None:
        lineage["parents"] += gmap_lineage_parents(gplan, spec.init)
        fps["gmap_memory_sha256"] = gplan.memory.sha256
        # the frozen model's forward on every token of the step, on top of the domain model's training FLOPs
        tokens = spec.data.batch_size * spec.data.seq_len
        per_step = tokens * (flops_mod.training_flops_per_token(spec.model, spec.data.seq_len)
                             + flops_mod.forward_flops_per_token(general.config, spec.data.seq_len))
        step_flops = None if args.flops_per_step else (lambda step: per_step)
    elif spec.init:
        lineage["parents"].append(ckpt.parent_record(spec.init))
    extra = {**fps, "data_spec": dataclasses.asdict(spec.data)}
    return fit(model, model_loss, data, args, callbacks, tokenizer_json=tokenizer.to_json_str(),
               lineage=lineage, extra_state=extra, step_flops=step_flops)


def _refuse_prompt_dir(run_dir: Path) -> None:
    """A soft-prompt directory (``morphlm prompt-tune --out``) holds prompt vectors for a frozen model, not a
    model: say so, with what it scored and how to use it, instead of "config.json is missing"."""
    import json

    doc_path = run_dir / "prompt.json"
    if (run_dir / ckpt.CONFIG_FILE).exists() or not doc_path.is_file():
        return
    try:
        doc = json.loads(doc_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        doc = {}
    doc = doc if isinstance(doc, dict) else {}
    lineage = ckpt.read_lineage(run_dir) or {}
    parents = [p.get("path") for p in lineage.get("parents", []) if isinstance(p, dict) and p.get("path")]
    base = parents[0] if parents else "the model it was tuned for"
    metrics = doc.get("metrics") if isinstance(doc.get("metrics"), dict) else {}
    scored = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, (int, float)))
    pcfg = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    raise ckpt.CheckpointError(
        f"{run_dir} is a soft-prompt directory written by `morphlm prompt-tune` ({pcfg.get('prompt_len', '?')} "
        f"prompt vectors, {doc.get('reading', '?')} reading), not a model: it has no weights or config.json of its "
        f"own. {'Its final dev metrics (prompt.json): ' + scored + '. ' if scored else ''}Use it with its frozen "
        f"model {base} through morphlm.grow.prompt_tuning (load_prompt + prompted_forward); `morphlm eval {base}` "
        f"evaluates the model without the prompt")


def _eval_data(run_dir: Path, cfg: ModelConfig, corpus: str | None, task_val: str | None) -> DataSpec:
    """The data ``eval`` scores on: the run's own recorded data, ``corpus`` (language models) or ``task_val``
    (classifiers); a directory that records none (a converted model) needs one of them."""
    saved = ckpt.saved_data(run_dir)
    fields = {f.name for f in dataclasses.fields(DataSpec)}
    spec = DataSpec(**{k: v for k, v in saved.items() if k in fields})
    if cfg.head == "cls":
        if corpus is not None:
            raise ConfigError(f"{run_dir} is a classifier (head=cls): it is scored on labelled examples, not a "
                              f"corpus; pass --task-val FILE (TSV/CSV/JSONL with a label column) instead of --corpus")
        if task_val is not None:
            spec.task_train = spec.task_val = str(task_val)
        elif not (saved.get("task_train") and saved.get("task_val")):
            raise ConfigError(f"{run_dir} is a classifier and records no task files to score it on; pass "
                              f"--task-val FILE (TSV/CSV/JSONL with a label column)")
        return spec
    if task_val is not None:
        raise ConfigError(f"{run_dir} is a {cfg.head} model: --task-val scores classifiers; pass --corpus NAME|PATH")
    if corpus is not None:
        spec.corpus = corpus
    elif not saved.get("corpus"):
        raise ConfigError(f"{run_dir} records no data it was trained on (e.g. a converted model), so there is nothing "
                          f"held out to score it on; pass --corpus NAME|PATH (e.g. --corpus stdlib, or a text "
                          f"file); `morphlm data list` shows the named corpora")
    return spec


def eval_run(run_dir: str | Path, *, corpus: str | None = None, task_val: str | None = None, device: str = "auto",
             max_batches: int | None = None, latency: bool = False, latency_runs: int = 100,
             latency_warmup: int = 10, latency_threads: int = 1, latency_seq_len: int = 128,
             progress: bool = True) -> dict[str, float]:
    """Validation loss and perplexity (language models) or accuracy (classifiers: no perplexity, which only
    means something for a distribution over tokens) of a checkpoint directory, on the run's own held-out data,
    ``corpus`` or ``task_val`` (a directory recording no data, such as a converted model, needs one of them);
    its parameter count (as a float model counts them, also for quantized directories); ``bytes_on_disk``: the
    artifact a user would ship (:func:`checkpoint.shipped_bytes`: weights or packed codes + config.json +
    tokenizer.json), ``weights_bytes`` (model.safetensors alone) and ``dir_bytes`` (every file in the
    directory: stage folders, optimizer state, logs); and, with ``latency``, the forward latency at batch 1
    and 32 (median and p90 ms over ``latency_runs`` timed runs after ``latency_warmup``, ``latency_threads``
    threads, sequence ``latency_seq_len`` capped at max_seq_len; the harness of morphlm.train.latency, with a
    progress bar). Quantized directories (config.json with a ``quantization`` block) load through their
    registered loaders, e.g. packed ternary models."""
    run_dir = Path(run_dir)
    _refuse_prompt_dir(run_dir)
    dev = resolve_device(device)
    model, tokenizer, _ = ckpt.open_checkpoint(run_dir, device=dev,
                                               need_tokenizer="evaluation needs the tokenizer the model was trained with")
    _check_vocab(tokenizer, model.config, str(run_dir))
    data_spec = _eval_data(run_dir, model.config, corpus, task_val)
    if max_batches is not None:
        data_spec.eval_batches = max_batches
    spec = RunSpec(model=model.config, data=data_spec)
    _, data, _ = build_data(spec, tokenizer)
    metrics = evaluate(model, model_loss, data.val_batches(), dev)
    out: dict[str, Any] = {"val_loss": metrics["val_loss"]}
    if model.config.head == "cls":
        out["accuracy"] = metrics["val_accuracy"]
    else:
        out["perplexity"] = metrics["val_ppl"]
    with torch.device("meta"):  # the float model's parameter count: a packed model's codes are buffers
        out["params"] = TransformerLM(model.config).num_parameters()
    if model.config.moe_experts:  # mixture of experts: the parameters one token uses, beside the total
        out["active_params"] = out["params"] - flops_mod.inactive_params(model.config)
    out["bytes_on_disk"] = ckpt.shipped_bytes(run_dir)
    out["weights_bytes"] = (run_dir / ckpt.MODEL_FILE).stat().st_size
    out["dir_bytes"] = ckpt.total_bytes(run_dir)
    if latency:
        from .latency import measure_latency  # the one latency harness
        from ..progress import progress_bar

        seq = min(latency_seq_len, model.config.max_seq_len)
        bar = progress_bar(total=2 * (latency_warmup + latency_runs), desc="latency", unit="pass",
                           disable=not progress)
        try:
            for bs in (1, 32):
                bar.set_postfix_str(f"batch {bs}", refresh=False)
                r = measure_latency(model, batch_size=bs, seq_len=seq, threads=latency_threads,
                                    warmup=latency_warmup, runs=latency_runs, on_call=lambda: bar.update(1))
                out[f"latency_b{bs}_median_ms"] = r["median_ms"]
                out[f"latency_b{bs}_p90_ms"] = r["p90_ms"]
        finally:
            bar.close()
        out["latency_seq_len"] = seq
        out["latency_threads"] = latency_threads
    return out


def sample_texts(run_dir: str | Path, prompt: str, *, n: int = 1, max_new_tokens: int = 100,
                 temperature: float = 0.8, top_k: int | None = 50, seed: int = 0, device: str = "auto") -> list[str]:
    """Sample ``n`` continuations of ``prompt`` from a causal LM checkpoint."""
    from ..model import generate

    dev = resolve_device(device)
    model, tok, _ = ckpt.open_checkpoint(run_dir, device=dev, need_tokenizer="sampling needs the model's tokenizer")
    _check_vocab(tok, model.config, str(run_dir))
    ids = tok.encode(prompt) or [tok.eos_id]
    x = torch.tensor([ids] * n, dtype=torch.long, device=dev)
    g = torch.Generator(device=dev).manual_seed(seed)
    # the KV cache holds prompt + new tokens inside the context; a longer request slides over the last
    # max_seq_len tokens without it (every new token reruns the window)
    cached = max_new_tokens < model.config.max_seq_len
    if not cached:
        log.info("%d new tokens do not fit the model's context of %d tokens: generating without the KV cache, "
                 "sliding over the last %d tokens", max_new_tokens, model.config.max_seq_len,
                 model.config.max_seq_len)
    y = generate(model, x, max_new_tokens, temperature=temperature, top_k=top_k, generator=g, use_cache=cached)
    return [tok.decode(row.tolist()) for row in y]
