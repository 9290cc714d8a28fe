"""Progressive training schedules through the one training loop: bert2BERT two-stage, Apollo, MSLT, chains.

``run_schedule(name, target, data, args, source=..., seed=..., **opts) -> ScheduleResult`` runs a schedule
as a sequence of *stages*; each stage prepares the model (grow, interpolate, freeze) and trains it with one
``fit`` call. ``args.max_steps`` is the optimizer-step budget of the whole schedule and the stages split
it; every stage's fit continues the global step (``fit(step_offset=...)``), so the batches, the LR
schedule (warmup + decay over ``args.schedule_steps``, default ``args.max_steps``) and the eval cadence
are exactly those of a plain run of ``args.max_steps`` steps — curves are comparable with a scratch run
(a two-stage run with ``stage1_fraction=0`` reproduces a plain fit exactly). AdamW moments carry over
from one stage to the next through the stage's parameter map: same names keep theirs (two-stage, MSLT),
Apollo's interpolated layers take their source layer's, chains use ``carry_optimizer_state`` (entries of
original units keep theirs, new units and new layers start at zero; a learned operator without index maps
starts a fresh AdamW). The methods live in :mod:`morphlm.grow.schedule_methods` (bert2BERT,
arXiv 2110.07143; MSLT, arXiv 2011.13635; Apollo, arXiv 2401.09192).

Parallelism: sub-model sampling leaves parameters without gradients, which DDP/FSDP reducers reject unless
configured for unused parameters, and swapping the block list recompiles a ``torch.compile``d model; the
schedules are meant for single-process runs (tested on CPU).

On disk (``args.out_dir = out``): ``out/schedule.json`` (the plan: stages, their steps and operator FLOPs),
``out/stage<k>-<label>/`` (a normal checkpoint directory written by fit, resumable on its own) and, at
the end, ``out/`` itself holds the final model as a normal checkpoint directory whose lineage.json records
the schedule, every stage and the FLOPs (training + operator fitting; the source's own cost as a parent).
A killed run restarted with ``resume="auto"`` replays the completed stages from their checkpoints and
continues the interrupted one where it stopped; the result equals an uninterrupted run on CPU.

FLOPs accounting (the one ruler, :mod:`morphlm.train.flops`; per token, P = a layer's matmul weights,
H = the head's, d·T the attention term):

* a trained layer costs ``6P + 12dT`` (forward 2P + 4dT, backward 4P + 8dT) — exactly the ruler's count;
* a frozen layer that gradients must cross (a trainable layer lies below it) costs forward ``2P + 4dT`` +
  backward-to-input ``2P + 8dT`` (the attention-score backward is needed for the input gradient), no
  weight gradient: ``4P + 12dT``;
* a frozen layer below every trainable one runs under ``no_grad``: forward only, ``2P + 4dT``; this is
  what this module runs for the frozen bottom of MSLT stages and bert2BERT stage-1 sub-models;
* a layer not in the sampled sub-model costs 0; a layer used k times (Apollo's weight sharing) costs k×;
* the head is always trained: ``6H``. A step costs the per-token sum × tokens per step, and with every
  layer trained this equals ``training_flops_per_token`` exactly. Growth-operator fitting (LiGO, Mango)
  adds the operator's own FLOPs as reported by the growth method.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from ..io import write_atomic
from ..model.config import ModelConfig
from ..model.transformer import TransformerLM
from ..train import checkpoint as ckpt
from ..train import flops as flops_mod
from ..train.loop import TrainArgs, fit, model_loss
from .depth import load_optimizer_state
from .errors import GrowthError

log = logging.getLogger("morphlm.grow.schedules")

SCHEDULE_FILE = "schedule.json"
LAYER_MODES = ("train", "frozen", "forward")


# ---------------------------------------------------------------------------- FLOPs
def view_flops_per_token(cfg: ModelConfig, seq_len: int, modes: Sequence[str]) -> float:
    """Training FLOPs per token of a forward through the layers listed by ``modes`` (one entry per layer
    *run*, in order; see the module docstring): "train" 6P+12dT, "frozen" 4P+12dT, "forward" 2P+4dT;
    plus the trained head 6H."""
    P = flops_mod.layer_matmul_params(cfg)
    attn = 4 * cfg.d_model * seq_len  # forward QKᵀ and AV per layer per token
    per = {"train": 3 * (2 * P + attn), "frozen": 2 * P + attn + 2 * P + 2 * attn, "forward": 2 * P + attn}
    bad = [m for m in modes if m not in per]
    if bad:
        raise GrowthError(f"unknown layer mode(s) {bad}; use {LAYER_MODES}")
    return float(sum(per[m] for m in modes) + 3 * 2 * flops_mod.head_matmul_params(cfg, seq_len))


def _modes_for(n_run: int, trainable: Sequence[bool]) -> list[str]:
    """Modes of the layers of a forward view: frozen layers below the lowest trainable one run forward only."""
    lowest = next((i for i, t in enumerate(trainable) if t), n_run)
    return ["train" if t else ("forward" if i < lowest else "frozen") for i, t in enumerate(trainable)]


# ---------------------------------------------------------------------------- layer views
class _NoGrad(nn.Module):
    """A block run under ``torch.no_grad`` (a frozen layer below every trainable one: forward only)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, h, *args, **kwargs):
        with torch.no_grad():
            return self.block(h, *args, **kwargs)


def forward_view(model: nn.Module, batch: dict[str, torch.Tensor], layers: Sequence[int], n_no_grad: int = 0):
    """``model(**batch)`` through the blocks ``layers`` (indices into ``model.blocks``, repeats allowed: weight
    sharing), the first ``n_no_grad`` of them without autograd (no gradient reaches them or anything below).
    The model's own forward runs on a temporary block list, so embeddings, masks, norms and heads are the
    native ones; the original list is restored afterwards."""
    raw = getattr(model, "module", model)
    raw = getattr(raw, "_orig_mod", raw)
    blocks = raw._modules["blocks"]
    view = [blocks[i] for i in layers]
    view = [_NoGrad(b) if k < n_no_grad else b for k, b in enumerate(view)]
    raw._modules["blocks"] = nn.ModuleList(view)
    try:
        return model(**batch)
    finally:
        raw._modules["blocks"] = blocks


# ---------------------------------------------------------------------------- results and registry
@dataclass
class ScheduleResult:
    model: TransformerLM
    flops: float  # training FLOPs of every stage + operator fitting; NOT the source's own pretraining
    source_flops: float
    curve: list[dict[str, float]]  # {step, flops, val_loss} stitched across stages: one point per eval (the global
    # eval_every cadence, plus the end of every stage); flops cumulative incl. operator fitting
    stages: list[dict[str, Any]]
    out_dir: str | None = None
    val_loss: float | None = None
    steps: int = 0
    tokens: int = 0


@dataclass
class Stage:
    """One stage of a schedule. ``enter(prev_model, resuming) -> (model, carry)`` prepares the model (carry:
    maps the previous stage's name-keyed optimizer state to this model's, or None); ``loss_fn`` and
    ``step_flops(global_step, tokens_per_step, seq_len)`` (None: the ruler's full-model count) drive fit."""

    label: str
    steps: int
    enter: Callable[[TransformerLM | None, bool], tuple[TransformerLM, Callable | None]]
    loss_fn: Callable | None = None
    step_flops: Callable[[int, int, int], float] | None = None
    callbacks: list = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    operator_flops: float = 0.0  # set by enter (growth operator fitting)


ScheduleBuilder = Callable[..., list[Stage]]
SCHEDULES: dict[str, ScheduleBuilder] = {}


def register_schedule(name: str) -> Callable[[ScheduleBuilder], ScheduleBuilder]:
    def deco(fn: ScheduleBuilder) -> ScheduleBuilder:
        SCHEDULES[name] = fn
        return fn
    return deco


def available_schedules() -> list[str]:
    """Every registered schedule (morphlm/grow/__init__.py imports each module that declares one)."""
    return sorted(SCHEDULES)


def split_steps(total: int, fractions: Sequence[float]) -> list[int]:
    """Integer step counts summing to ``total``, proportional to ``fractions`` (cumulative rounding)."""
    if any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise GrowthError(f"stage fractions {list(fractions)} must be >= 0 with a positive sum")
    s = float(sum(fractions))
    cum, bounds = 0.0, [0]
    for f in fractions:
        cum += f
        bounds.append(int(round(total * cum / s)))
    bounds[-1] = total
    return [b - a for a, b in zip(bounds, bounds[1:])]


# ---------------------------------------------------------------------------- sources
def load_source(source: TransformerLM | str | Path | None) -> tuple[TransformerLM | None, float, str | None]:
    """(model, its total FLOPs from lineage (0 for an in-memory model), its directory or None)."""
    if source is None or isinstance(source, TransformerLM):
        return source, 0.0, None
    path = Path(source)
    if not ckpt.has_checkpoint(path):
        raise GrowthError(f"source {path} is not a checkpoint directory; pass one written by `morphlm train --out DIR`")
    return ckpt.load_model(path), ckpt.total_flops(path), str(path.resolve())


def fresh_model(cfg: ModelConfig, seed: int) -> TransformerLM:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TransformerLM(cfg)


# ---------------------------------------------------------------------------- optimizer carry-over
class _CarryOptimizer:
    """fit callback: at the first step of a fresh stage, load the carried AdamW state (only entries of
    parameters this optimizer holds, with matching shapes)."""

    def __init__(self, state: dict) -> None:
        self.state = state

    def on_step_begin(self, fstate) -> None:
        if self.state is None or fstate.optimizer is None:
            return
        model = fstate.raw_model
        held = {id(p) for g in fstate.optimizer.param_groups for p in g["params"]}
        params = dict(model.named_parameters())
        keep = {n: e for n, e in self.state["state"].items()
                if n in params and id(params[n]) in held
                and all(not torch.is_tensor(v) or v.dim() == 0 or v.shape == params[n].shape for v in e.values())}
        load_optimizer_state(model, fstate.optimizer, {"state": keep})
        self.state = None


class _Capture:
    """fit callback: keep the stage's final optimizer state (name-keyed) for the next stage."""

    def __init__(self) -> None:
        self.state = None

    def on_train_end(self, fstate) -> None:
        from ..train.parallel import full_optimizer_state

        if fstate.optimizer is not None:
            self.state = full_optimizer_state(fstate.raw_model, fstate.optimizer)


class _EvalCurve:
    def __init__(self) -> None:
        self.points: list[tuple[int, float, float]] = []

    def on_eval(self, fstate, metrics) -> None:
        self.points.append((fstate.step, fstate.flops, float(metrics["val_loss"])))


def remap_layers_state(state: dict, layer_map: Sequence[int | None]) -> dict:
    """Name-keyed optimizer state with ``blocks.k.*`` taken from ``blocks.{layer_map[k]}.*`` (None: dropped)."""
    out: dict[str, Any] = {}
    for name, entry in state["state"].items():
        if not name.startswith("blocks."):
            out[name] = entry
    for k, src in enumerate(layer_map):
        if src is None:
            continue
        prefix = f"blocks.{src}."
        for name, entry in state["state"].items():
            if name.startswith(prefix):
                out[f"blocks.{k}.{name[len(prefix):]}"] = {kk: (v.clone() if torch.is_tensor(v) else v)
                                                            for kk, v in entry.items()}
    return {"state": out, "param_groups": state.get("param_groups", [])}


# ---------------------------------------------------------------------------- the runner
def _stage_dir(out: Path | None, k: int, stage: Stage) -> Path | None:
    return None if out is None else out / f"stage{k}-{stage.label}"


def _read_optimizer(run_dir: Path) -> dict | None:
    from ..train.optim import _unflatten_optimizer

    trainer, tensors = ckpt.load_trainer_state(run_dir)
    return _unflatten_optimizer(tensors, trainer.get("param_groups", []))


def run_stages(name: str, stages: list[Stage], data, args: TrainArgs, *, callbacks: Iterable[Any] = (),
               options: dict[str, Any] | None = None, source_flops: float = 0.0, source_dir: str | None = None,
               tokenizer_json: str | None = None, extra_state: dict[str, Any] | None = None) -> ScheduleResult:
    """Run ``stages`` in order with one fit each; see the module docstring."""
    args = dataclasses.replace(args)
    args.validate()
    total = sum(s.steps for s in stages)
    if total != args.max_steps:
        raise GrowthError(f"the stages add up to {total} steps but max_steps is {args.max_steps}")
    horizon = args.schedule_steps or args.max_steps
    out = Path(args.out_dir) if args.out_dir else None
    plan = {"schedule": name, "options": options or {}, "max_steps": args.max_steps, "schedule_steps": horizon,
            "stages": [{"label": s.label, "steps": s.steps, **s.info} for s in stages]}
    saved: dict[str, Any] = {}
    if out is not None:
        sfile = out / SCHEDULE_FILE
        if sfile.exists():
            saved = json.loads(sfile.read_text(encoding="utf-8"))
            if args.resume != "auto":
                raise GrowthError(f"{out} already holds a {saved.get('schedule')} schedule run; pass --resume auto "
                                  f"to continue it, or choose another --out so nothing is overwritten")
            same = {k: saved.get(k) for k in ("schedule", "max_steps", "schedule_steps")}
            if same != {k: plan[k] for k in same} or [s["label"] for s in saved["stages"]] != [s.label for s in stages]:
                raise GrowthError(f"{out} holds a different schedule ({saved.get('schedule')}, "
                                  f"{saved.get('max_steps')} steps, stages {[s['label'] for s in saved['stages']]}); "
                                  f"resume with the same settings or choose another --out")
        else:  # a new or empty folder only (a checkpoint, an export, other files: refused, naming them)
            ckpt.claim_output_dir(out, "train --schedule", error=GrowthError)
        out.mkdir(parents=True, exist_ok=True)
        for rec, s in zip(saved.get("stages", []), stages):
            s.operator_flops = float(rec.get("operator_flops", 0.0))  # kept when a resumed stage skips its operator

        def write_plan() -> None:
            plan["stages"] = [{"label": s.label, "steps": s.steps, "operator_flops": s.operator_flops, **s.info}
                              for s in stages]
            write_atomic(out / SCHEDULE_FILE, json.dumps(plan, indent=2, sort_keys=True, default=str))

        write_plan()

    model: TransformerLM | None = None
    prev_optimizer: dict | None = None
    offset, flops_total, tokens_total = 0, 0.0, 0
    curve: list[dict[str, float]] = []
    records: list[dict[str, Any]] = []
    val_loss = None
    for k, stage in enumerate(stages):
        sdir = _stage_dir(out, k, stage)
        resuming = sdir is not None and ckpt.has_trainer_state(sdir)
        model, carry = stage.enter(model, resuming)
        if out is not None:
            write_plan()
        flops_total += stage.operator_flops
        rec = {"stage": k, "label": stage.label, "steps": stage.steps, "start_step": offset,
               "operator_flops": stage.operator_flops, "n_layers": model.config.n_layers,
               "d_model": model.config.d_model, "out_dir": str(sdir) if sdir else None, **stage.info}
        if stage.steps == 0:
            rec.update(flops=0.0)
            records.append(rec)
            continue
        sargs = dataclasses.replace(args, out_dir=str(sdir) if sdir else None, max_steps=stage.steps,
                                    schedule_steps=horizon, flops_per_step=None)
        cbs: list[Any] = list(stage.callbacks) + list(callbacks)
        if not resuming and carry is not None and prev_optimizer is not None:
            cbs.insert(0, _CarryOptimizer(carry(prev_optimizer)))
        capture, evals = _Capture(), _EvalCurve()
        cbs += [capture, evals]
        shape = data.train_batch(offset)["input_ids"].shape
        tokens_per_step, seq_len = int(shape[0] * shape[1]), int(shape[1])
        step_flops = None
        if stage.step_flops is not None:
            off, fn = offset, stage.step_flops
            step_flops = lambda s, off=off, fn=fn: fn(off + s, tokens_per_step, seq_len)  # noqa: E731
        lineage = {"verb": "train", "schedule": name, "stage": k, "label": stage.label}
        res = fit(model, stage.loss_fn or model_loss, data, sargs, cbs, tokenizer_json=tokenizer_json,
                  lineage=lineage, extra_state=extra_state, step_offset=offset, step_flops=step_flops)
        # the stage's eval points: from its metrics file (complete across resumes) or from the callback
        points = evals.points
        if sdir is not None and (sdir / ckpt.METRICS_FILE).exists():
            points = []
            for line in (sdir / ckpt.METRICS_FILE).read_text(encoding="utf-8").splitlines():
                r = json.loads(line)
                if "val_loss" in r:
                    points.append((int(r["step"]), float(r["flops"]), float(r["val_loss"])))
        for step, fl, vl in points:
            curve.append({"step": offset + step, "flops": flops_total + fl, "val_loss": vl})
        if points:
            val_loss = points[-1][2]
        flops_total += res.flops
        tokens_total += res.tokens
        rec.update(flops=res.flops, val_loss=points[-1][2] if points else None)
        records.append(rec)
        prev_optimizer = capture.state
        if prev_optimizer is None and sdir is not None and ckpt.has_trainer_state(sdir):
            prev_optimizer = _read_optimizer(sdir)
        offset += stage.steps
        for cb in stage.callbacks:  # e.g. MSG masks: the stage is over, the model is plain again
            if hasattr(cb, "remove"):
                cb.remove()

    model.train(False)
    if out is not None:
        lineage = {"verb": "train", "schedule": name, "options": options or {}, "stages": records,
                   "flops": flops_total, "training_flops": flops_total, "source_flops": source_flops,
                   "tokens": tokens_total, "steps": offset, "val_loss": val_loss,
                   "parents": [ckpt.parent_record(source_dir, flops=source_flops)] if source_dir else []}
        if extra_state and "data_spec" in extra_state:
            lineage["data"] = extra_state["data_spec"]
        ckpt.save_checkpoint(out, {k: v.detach().cpu() for k, v in model.state_dict().items()}, model.config,
                             tokenizer_json=tokenizer_json, lineage=lineage)
    return ScheduleResult(model, flops_total, source_flops, curve, records, str(out) if out else None,
                          val_loss, offset, tokens_total)


def run_schedule(name: str, target: ModelConfig, data, args: TrainArgs, *, source=None, seed: int = 0,
                 callbacks: Iterable[Any] = (), tokenizer_json: str | None = None,
                 extra_state: dict[str, Any] | None = None, **opts: Any) -> ScheduleResult:
    """Train ``target`` with the progressive schedule ``name`` (two-stage | apollo | mslt | chain).

    ``source``: a smaller trained model or its checkpoint directory (its own FLOPs are reported as
    ``source_flops``, never in ``flops``). ``args.max_steps`` is the budget of all stages together,
    ``args.eval_every`` the global eval cadence. Method options (``**opts``) are documented on each
    schedule in :mod:`morphlm.grow.schedule_methods`; ``source_flops=`` overrides the source's cost.
    """
    if name not in SCHEDULES:
        raise GrowthError(f"unknown schedule {name!r}; choose one of {', '.join(available_schedules())}")
    if not isinstance(target, ModelConfig):
        from .api import resolve_target

        target = resolve_target(target)
    src_model, src_flops, src_dir = load_source(source)
    if "source_flops" in opts:
        src_flops = float(opts.pop("source_flops"))
    if src_model is not None and src_model.config.vocab_size != target.vocab_size:
        raise GrowthError(f"the source's vocab_size {src_model.config.vocab_size} differs from the target's "
                          f"{target.vocab_size}; growth keeps the vocabulary — use a target with the source's vocab")
    if src_model is not None and src_model.config.n_layers > target.n_layers:
        raise GrowthError(f"the target ({target.n_layers} layers) is shallower than the source "
                          f"({src_model.config.n_layers} layers); a schedule only grows — pick a deeper target")
    if args.max_steps <= 0:
        raise GrowthError(f"max_steps={args.max_steps} must be > 0")
    stages = SCHEDULES[name](target, data, args, source=src_model, seed=seed, **opts)
    options = {"seed": seed, **{k: v for k, v in opts.items() if k != "data"}}
    if src_dir:
        options["source"] = src_dir
    return run_stages(name, stages, data, args, callbacks=callbacks, options=options, source_flops=src_flops,
                      source_dir=src_dir, tokenizer_json=tokenizer_json, extra_state=extra_state)


# ---------------------------------------------------------------------------- `morphlm train --growth-schedule`
def run_from_spec(spec, callbacks=()):
    """``morphlm train --growth-schedule NAME``: a RunSpec (train.run) whose ``schedule`` names any registered schedule
    → a FitResult-like summary."""
    from ..model.config import ConfigError
    from ..train.loop import FitResult
    from ..train.run import build_data

    if spec.schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {spec.schedule!r}; choose one of {', '.join(available_schedules())}")

    if spec.init:
        raise GrowthError("--init does not combine with --growth-schedule; pass the smaller model as --source DIR")
    opts = dict(spec.schedule_opts or {})
    source = opts.pop("source", None)
    tokenizer = None
    if source is not None:
        tokenizer = ckpt.open_tokenizer(source) if Path(str(source)).is_dir() else None
    elif spec.train.out_dir and Path(spec.train.out_dir).is_dir():
        tokenizer = ckpt.open_tokenizer(spec.train.out_dir)
    tokenizer, data, fps = build_data(spec, tokenizer)
    extra = {**fps, "data_spec": dataclasses.asdict(spec.data)}
    res = run_schedule(spec.schedule, spec.model, data, spec.train, source=source, seed=spec.train.seed,
                       callbacks=callbacks, tokenizer_json=tokenizer.to_json_str(), extra_state=extra, **opts)
    metrics = {"val_loss": res.val_loss, "stages": len(res.stages), "source_flops": res.source_flops}
    return FitResult(res.steps, res.tokens, res.flops, None, res.val_loss, metrics, res.out_dir)


__all__ = ["SCHEDULES", "ScheduleResult", "Stage", "available_schedules", "forward_view", "register_schedule",
           "remap_layers_state", "run_from_spec", "run_schedule", "run_stages", "split_steps", "view_flops_per_token"]
