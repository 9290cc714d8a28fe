"""fit(): the one training loop.

Pretraining, fine-tuning, distillation, QAT, growth-operator fitting and architecture search all call
``fit(model, loss_fn, data, args, callbacks)``; they differ only in the loss function and the data.

Contracts
---------
``data.train_batch(step) -> dict[str, Tensor]`` returns the *global* batch of an optimizer step as a pure
function of (seed, step). Each rank takes its slice, then splits it into micro-batches for gradient
accumulation. Because the batch depends only on the step, the data cursor is the step, a resumed run
sees exactly the batches it would have seen, and a K-process run sees the same global batch as one
process. ``data.val_batches() -> list[dict]`` gives the fixed evaluation set.

``loss_fn(model, batch) -> loss`` or ``(loss, {name: scalar tensor})``: a mean over the batch. Micro-
batch losses are averaged with equal weights (mean of means), and DDP averages across ranks, so the
update equals the single-process update on the same global batch.

Resume is bit-exact on CPU: weights and AdamW state are saved in float32 safetensors, the schedule is a
function of the step, dropout is reseeded from (seed, rank, step), and batches from (seed, step).
The LR schedule runs over ``schedule_steps`` (not ``max_steps``), so extending a run with a larger
``max_steps`` does not change its past.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import torch
from torch import nn

from . import checkpoint as ckpt
from . import flops as flops_mod
from .optim import TrainArgs, _flatten_optimizer, _unflatten_optimizer, build_optimizer, lr_at, resolve_device  # noqa: F401
from .parallel import (DistInfo, all_reduce_mean, barrier, full_model_state, full_optimizer_state,
                       init_distributed, load_full_optimizer_state, unwrap, wrap_model)

log = logging.getLogger("morphlm.train")


class TrainingDiverged(RuntimeError):
    """Loss became NaN/inf; the last good checkpoint is kept."""


class BatchSource(Protocol):
    def train_batch(self, step: int) -> dict[str, torch.Tensor]: ...

    def val_batches(self) -> list[dict[str, torch.Tensor]]: ...


LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], Any]


def model_loss(model: nn.Module, batch: dict[str, torch.Tensor]):
    """Default loss: the model's own (causal LM, masked LM or classification), plus accuracy for classifiers."""
    out = model(**batch)
    extra = {}
    if out.logits.dim() == 2 and "labels" in batch:
        extra["accuracy"] = (out.logits.argmax(-1) == batch["labels"]).float().mean()
    return out.loss, extra


@dataclass
class FitState:
    """What callbacks see."""

    step: int = 0
    tokens: int = 0
    flops: float = 0.0
    model: nn.Module | None = None
    raw_model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    dist: DistInfo = field(default_factory=DistInfo)
    last_metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class FitResult:
    steps: int
    tokens: int
    flops: float
    final_loss: float | None
    val_loss: float | None
    metrics: dict[str, Any]
    out_dir: str | None
    interrupted: bool = False


class StopScope:
    """One stop request shared by every fit() run inside ``with StopScope() as scope:``, for drivers that call
    fit() many times (benchmarks, searches). Without a scope each fit() installs its own signal handlers, so
    after a SIGINT/SIGTERM stopped one fit() the driver would start the next one at full length, and a second
    Ctrl-C would count as a new first one. Inside a scope, once any fit() was asked to stop, ``scope.requested``
    is set, every later fit() stops (and saves, if it has an out_dir) at its first step boundary, and a second
    Ctrl-C raises KeyboardInterrupt. Drivers check ``scope.requested`` before caching a result."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self) -> "StopScope":
        self.requested = False
        _SCOPES.append(self)
        return self

    def __exit__(self, *exc) -> bool:
        if self in _SCOPES:
            _SCOPES.remove(self)
        return False


_SCOPES: list[StopScope] = []


class _StopFlag:
    """First SIGINT/SIGTERM asks the loop to save and stop at the next step boundary; a second SIGINT aborts.
    Inside a :class:`StopScope` whose stop was already requested, it starts out requested."""

    def __init__(self) -> None:
        self.requested = any(scope.requested for scope in _SCOPES)
        self._old: dict[int, Any] = {}

    def __enter__(self):
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            self._old = {}
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        for scope in _SCOPES:
            scope.requested = True
        log.warning("stop requested (signal %d): saving at the end of this step; press Ctrl-C again to abort", signum)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def _autocast(device: torch.device, precision: str):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _slice(batch: dict[str, torch.Tensor], lo: int, hi: int) -> dict[str, torch.Tensor]:
    return {k: v[lo:hi] for k, v in batch.items()}


def _split_loss(result) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if isinstance(result, tuple):
        return result[0], dict(result[1])
    return result, {}


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: LossFn, batches: Iterable[dict[str, torch.Tensor]],
             device: torch.device, precision: str = "auto") -> dict[str, float]:
    """Mean loss (and mean extra metrics) over batches, weighted by sequences per batch."""
    was_training = model.training
    model.eval()
    total_w, sums = 0, {}
    for batch in batches:
        batch = _to(batch, device)
        with _autocast(device, precision):
            loss, extra = _split_loss(loss_fn(model, batch))
        w = batch["input_ids"].shape[0]
        total_w += w
        sums["val_loss"] = sums.get("val_loss", 0.0) + float(loss) * w
        for k, v in extra.items():
            sums[f"val_{k}"] = sums.get(f"val_{k}", 0.0) + float(v) * w
    model.train(was_training)
    if total_w == 0:
        raise ValueError("evaluation got no batches: the validation split is empty; use a larger corpus")
    out = {k: v / total_w for k, v in sums.items()}
    out["val_ppl"] = math.exp(min(out["val_loss"], 50.0))
    return out


class _MetricsWriter:
    def __init__(self, path: Path | None, resume_step: int, enabled: bool) -> None:
        self.path = path if enabled else None
        self.tb = None
        if self.path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # a run killed between checkpoints logged steps the checkpoint never saw: drop them
            ckpt.trim_metrics(path, resume_step)
            self.f = ckpt.open_append(path)  # refuses a symbolic link: nothing is written outside the run

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        self.f.write(json.dumps(record) + "\n")
        self.f.flush()
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.path is not None:
            self.f.close()
        if self.tb is not None:
            self.tb.close()


def fit(
    model: nn.Module,
    loss_fn: LossFn | None,
    data: BatchSource,
    args: TrainArgs,
    callbacks: Iterable[Any] = (),
    *,
    tokenizer_json: str | None = None,
    lineage: dict[str, Any] | None = None,
    extra_state: dict[str, Any] | None = None,
    step_offset: int = 0,
    step_flops: Callable[[int], float] | None = None,
    aux_modules: nn.Module | None = None,
) -> FitResult:
    """Train ``model`` with ``loss_fn`` on ``data``; see the module docstring for the contracts.

    ``step_offset`` (progressive schedules, morphlm.grow.schedules): this fit continues a longer run whose
    global step of local step 0 is ``step_offset``; the batches, the LR schedule, the dropout seed and the
    eval cadence follow the global step, while ``max_steps``, checkpoints and metrics count local steps.
    ``step_flops(step)``: FLOPs of local step ``step`` when they vary per step (sampled sub-models, frozen
    layers); it overrides ``args.flops_per_step`` and the ruler's full-model count.
    ``aux_modules``: extra trainable parameters the loss owns (distillation's projections W_h). They are
    moved to the device, updated by an AdamW with the same settings and LR schedule, clipped together
    with the model, and stored in state/optimizer.safetensors (``aux.param::NAME``, ``aux.state::I::KEY``)
    so resume is exact; they are not part of model.safetensors. (Not all-reduced under FSDP sharding:
    DDP-style gradient averaging is applied to them by hand.)
    """
    args.validate()
    loss_fn = loss_fn or model_loss
    callbacks = list(callbacks)
    device = resolve_device(args.device)
    info = init_distributed(device.type)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    out_dir = Path(args.out_dir) if args.out_dir else None
    cfg = unwrap(model).config

    # ---- resume -------------------------------------------------------------------------------
    start_step, tokens, flops_done = 0, 0, 0.0
    resume_state: dict[str, Any] | None = None
    optim_tensors: dict[str, torch.Tensor] = {}
    if out_dir is not None and ckpt.has_trainer_state(out_dir):
        if args.resume != "auto":
            raise ckpt.CheckpointError(
                f"{out_dir} already holds a training run; pass --resume auto to continue it, "
                f"or choose another --out so nothing is overwritten")
        resume_state, optim_tensors = ckpt.load_trainer_state(out_dir)
        saved_sched = resume_state.get("schedule_steps")
        if args.schedule_steps is None:
            args.schedule_steps = saved_sched
        elif saved_sched is not None and args.schedule_steps != saved_sched:
            raise ValueError(f"this run's LR schedule spans {saved_sched} steps but --schedule-steps "
                             f"{args.schedule_steps} was given; resume with the same schedule or start a new run")
        for key in ("data_fingerprint", "tokenizer_fingerprint"):
            saved, now = resume_state.get(key), (extra_state or {}).get(key)
            if saved and now and saved != now:
                raise ckpt.CheckpointError(
                    f"{out_dir} was trained on different data ({key} differs); resume with the same "
                    f"--corpus and tokenizer, or start a new run in another --out")
        state, _ = ckpt.load_state_dict(out_dir)
        unwrap(model).load_state_dict(state)
        start_step = int(resume_state["step"])
        tokens = int(resume_state["tokens"])
        flops_done = float(resume_state["flops"])
        if info.is_main:
            log.info("resuming %s at step %d", out_dir, start_step)
    if args.schedule_steps is None:
        args.schedule_steps = args.max_steps

    # the data decides the global batch (sequences per optimizer step) and the sequence length
    global_batch, seq_len = (int(n) for n in data.train_batch(start_step + step_offset)["input_ids"].shape)
    if global_batch % info.world_size:
        raise ValueError(f"the global batch of {global_batch} sequences is not divisible by the "
                         f"{info.world_size} processes; pick a batch size that is")
    per_rank = global_batch // info.world_size
    micro = args.micro_batch_size or per_rank
    if per_rank % micro:
        raise ValueError(f"micro_batch_size={micro} must divide the per-process batch of {per_rank} sequences")
    n_micro = per_rank // micro
    tokens_per_step = global_batch * seq_len
    flops_per_step = args.flops_per_step or flops_mod.training_flops_per_token(cfg, seq_len) * tokens_per_step

    torch.manual_seed(args.seed)
    raw = unwrap(model).to(device)
    wrapped = wrap_model(raw, args.parallel, info, device)
    optimizer = build_optimizer(wrapped, args, device)
    aux_params: list[torch.nn.Parameter] = []
    aux_opt = None
    if aux_modules is not None:
        aux_modules.to(device)
        aux_params = [p for p in aux_modules.parameters() if p.requires_grad]
        if resume_state is not None:
            saved_aux = {k.split("::", 1)[1]: v for k, v in optim_tensors.items() if k.startswith("aux.param::")}
            if saved_aux:
                aux_modules.load_state_dict(saved_aux)
        if aux_params:
            aux_opt = build_optimizer(aux_modules, args, device)
            if resume_state is not None and resume_state.get("aux_param_groups"):
                aux_state: dict[int, dict[str, torch.Tensor]] = {}
                for name, t in optim_tensors.items():
                    if name.startswith("aux.state::"):
                        _, idx, key = name.split("::")
                        aux_state.setdefault(int(idx), {})[key] = t
                aux_opt.load_state_dict({"state": aux_state, "param_groups": resume_state["aux_param_groups"]})
    if resume_state is not None and optim_tensors:
        load_full_optimizer_state(wrapped, optimizer, _unflatten_optimizer(optim_tensors, resume_state["param_groups"]))
        if "rng.cpu" in optim_tensors:
            torch.set_rng_state(optim_tensors["rng.cpu"])
    runner = torch.compile(wrapped) if args.compile else wrapped
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None

    writer = _MetricsWriter(out_dir / ckpt.METRICS_FILE if out_dir else None, start_step, info.is_main)
    if args.tensorboard and info.is_main and out_dir is not None:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer.tb = SummaryWriter(str(out_dir / "tensorboard"))
        except ImportError:
            log.warning("--tensorboard needs the tensorboard package (pip install tensorboard); continuing without it")

    fstate = FitState(step=start_step, tokens=tokens, flops=flops_done, model=runner, raw_model=raw,
                      optimizer=optimizer, dist=info)
    lineage_full = dict(lineage or {})

    def save(step: int) -> None:
        if out_dir is None:
            return
        model_state = full_model_state(wrapped)
        osd = full_optimizer_state(wrapped, optimizer)
        if info.is_main:
            tensors, groups = _flatten_optimizer(osd)
            tensors["rng.cpu"] = torch.get_rng_state()
            aux_groups = None
            if aux_modules is not None:
                for name, t in aux_modules.state_dict().items():
                    tensors[f"aux.param::{name}"] = t.detach().cpu()
                if aux_opt is not None:
                    aux_sd = aux_opt.state_dict()
                    for idx, entry in aux_sd["state"].items():
                        for key, value in entry.items():
                            tensors[f"aux.state::{idx}::{key}"] = (value if torch.is_tensor(value)
                                                                   else torch.tensor(value)).detach().cpu()
                    aux_groups = aux_sd["param_groups"]
            trainer = {
                "step": step, "tokens": fstate.tokens, "flops": fstate.flops,
                "schedule_steps": args.schedule_steps, "param_groups": groups,
                "args": {k: v for k, v in asdict(args).items()},
                "world_size": info.world_size, "data_cursor": {"step": step, "seed": args.seed},
                "torch": torch.__version__, **({"aux_param_groups": aux_groups} if aux_groups else {}),
                **(extra_state or {}),
            }
            lineage_full.setdefault("verb", "train")
            lineage_full["flops"] = fstate.flops
            lineage_full["tokens"] = fstate.tokens
            lineage_full["steps"] = step
            ckpt.save_checkpoint(out_dir, model_state, cfg, tokenizer_json=tokenizer_json,
                                 optimizer_tensors=tensors, trainer_state=trainer, lineage=lineage_full)
            for cb in callbacks:
                if hasattr(cb, "on_save"):
                    cb.on_save(fstate, out_dir)
        barrier(info)

    if start_step >= args.max_steps:
        if info.is_main:
            log.info("%s is already at step %d >= max_steps %d: nothing to train", out_dir, start_step, args.max_steps)
        writer.close()
        return FitResult(start_step, tokens, flops_done, None, resume_state.get("val_loss") if resume_state else None,
                         {}, str(out_dir) if out_dir else None)

    bar = None
    if args.progress and info.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=args.max_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    last_loss: float | None = None
    val_metrics: dict[str, float] = {}
    interrupted = False
    pin = device.type == "cuda"

    def prepare(step: int) -> list[dict[str, torch.Tensor]]:
        """This rank's micro-batches of ``step``, already on their way to the device."""
        local = _slice(data.train_batch(step + step_offset), info.rank * per_rank, (info.rank + 1) * per_rank)
        out = []
        for i in range(n_micro):
            mb = _slice(local, i * micro, (i + 1) * micro)
            if pin:
                mb = {k: v.pin_memory() for k, v in mb.items()}
            out.append(_to(mb, device))
        return out

    t_last = time.perf_counter()
    t_start = t_last
    runner.train()
    try:
        with _StopFlag() as stop:
            micro_batches = prepare(start_step)
            for step in range(start_step, args.max_steps):
                fstate.step = step
                for cb in callbacks:
                    if hasattr(cb, "on_step_begin"):
                        cb.on_step_begin(fstate)
                lr = lr_at(step + step_offset, args)
                for group in optimizer.param_groups + (aux_opt.param_groups if aux_opt else []):
                    group["lr"] = lr
                torch.manual_seed(args.seed + 1_000_003 * info.rank + step + step_offset)
                loss_sum = torch.zeros((), device=device)
                extras: dict[str, torch.Tensor] = {}
                for i, mb in enumerate(micro_batches):
                    last = i == n_micro - 1
                    sync = contextlib.nullcontext()
                    if info.enabled and not last and hasattr(wrapped, "no_sync"):
                        sync = wrapped.no_sync()
                    if info.enabled and hasattr(wrapped, "set_requires_gradient_sync"):
                        wrapped.set_requires_gradient_sync(last)
                    with sync, _autocast(device, args.precision):
                        loss, extra = _split_loss(loss_fn(runner, mb))
                    (loss / n_micro).backward()
                    loss_sum += loss.detach().float()
                    for k, v in extra.items():
                        extras[k] = extras.get(k, 0.0) + v.detach().float() / n_micro
                stats = [loss_sum / n_micro]
                if aux_params and info.enabled:  # the aux module is not wrapped: average its grads by hand
                    for p in aux_params:
                        if p.grad is not None:
                            p.grad.copy_(all_reduce_mean(p.grad, info))
                if args.grad_clip and args.grad_clip > 0:
                    clip_params = list(wrapped.parameters())
                    if args.parallel != "fsdp" or not info.enabled:
                        clip_params += aux_params  # FSDP2 norms are DTensors: aux is then clipped alone
                    elif aux_params:
                        torch.nn.utils.clip_grad_norm_(aux_params, args.grad_clip)
                    norm = torch.nn.utils.clip_grad_norm_(clip_params, args.grad_clip)
                    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
                        norm = norm.full_tensor()
                    stats.append(norm.float())
                stats.extend(extras.values())
                # The update is dispatched before the loss is read: one host sync per step, at its end. A
                # non-finite loss is caught right after; the in-memory weights are then discarded (nothing
                # is saved), so the last good checkpoint on disk is what remains.
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if aux_opt is not None:
                    aux_opt.step()
                    aux_opt.zero_grad(set_to_none=True)
                done = step + 1 == args.max_steps
                if not done:
                    micro_batches = prepare(step + 1)  # CPU work overlaps the GPU finishing this step
                values = torch.stack([t.to(device) for t in stats])
                stop_now = stop.requested
                if info.enabled:
                    flag = torch.tensor([float(stop.requested)], device=device)
                    values = all_reduce_mean(torch.cat([values, flag]), info)
                    stop_now = bool(values[-1] > 0)
                    values = values[:-1]
                vals = values.tolist()
                step_loss = vals[0]
                if not math.isfinite(step_loss):
                    where = f"; the last good checkpoint in {out_dir} is kept" if out_dir else ""
                    raise TrainingDiverged(
                        f"loss became {step_loss} at step {step + 1}{where}. Lower --lr (now {args.lr:g}), "
                        f"raise --warmup-steps, or check the data for bad tokens, then resume with --resume auto")

                fstate.tokens += tokens_per_step
                this_flops = flops_per_step if step_flops is None else float(step_flops(step))
                fstate.flops += this_flops
                now = time.perf_counter()
                dt = max(now - t_last, 1e-9)
                t_last = now
                last_loss = step_loss
                record: dict[str, Any] = {
                    "step": step + 1, "tokens": fstate.tokens, "flops": fstate.flops, "loss": step_loss,
                    "lr": lr, "tok_per_s": tokens_per_step / dt, "elapsed_s": now - t_start,
                }
                rest = vals[1:]
                if args.grad_clip and args.grad_clip > 0:
                    record["grad_norm"] = rest.pop(0)
                record.update(zip(extras.keys(), rest))
                m = flops_mod.mfu(this_flops / dt, device_name)
                if m is not None:
                    record["mfu"] = m
                fstate.step = step + 1
                fstate.last_metrics = record
                if (args.eval_every and (step + step_offset + 1) % args.eval_every == 0) or (done and args.eval_at_end):
                    val_metrics = evaluate(runner, loss_fn, data.val_batches(), device, args.precision)
                    record.update(val_metrics)
                    for cb in callbacks:
                        if hasattr(cb, "on_eval"):
                            cb.on_eval(fstate, val_metrics)
                    t_last = time.perf_counter()  # evaluation time is not training throughput
                writer.write(record)
                if bar is not None:
                    post = {"loss": f"{step_loss:.3f}", "lr": f"{lr:.2e}", "tok/s": f"{record['tok_per_s']:.0f}",
                            "PFLOP": f"{fstate.flops / 1e15:.3g}"}
                    if "mfu" in record:
                        post["mfu"] = f"{record['mfu']:.1%}"
                    if "val_loss" in record:
                        post["val"] = f"{record['val_loss']:.3f}"
                    bar.set_postfix(post, refresh=False)
                    bar.update(1)
                for cb in callbacks:
                    if hasattr(cb, "on_step_end"):
                        cb.on_step_end(fstate, record)
                if stop_now:
                    interrupted = True
                    save(step + 1)
                    break
                if done or (args.save_every and (step + 1) % args.save_every == 0):
                    save(step + 1)
                    t_last = time.perf_counter()
    finally:
        if bar is not None:
            bar.close()
        writer.close()
    for cb in callbacks:
        if hasattr(cb, "on_train_end"):
            cb.on_train_end(fstate)
    if interrupted and info.is_main:
        if out_dir:
            log.warning("stopped at step %d; state saved in %s — continue with --resume auto", fstate.step, out_dir)
        else:
            log.warning("stopped at step %d (no output directory: nothing was saved)", fstate.step)
    return FitResult(fstate.step, fstate.tokens, fstate.flops, last_loss, val_metrics.get("val_loss"),
                     {**fstate.last_metrics, **val_metrics}, str(out_dir) if out_dir else None, interrupted)
