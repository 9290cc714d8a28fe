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
update equals the single-process update on the same global batch. A mixture-of-experts model's balancing and z
losses of each micro-batch (steps.routing_terms) are added to the loss that is differentiated and logged apart as
``loss_aux``, with the routing load statistics.

Resume is bit-exact on CPU: weights and AdamW state are saved in float32 safetensors, the schedule is a
function of the step, dropout is reseeded from (seed, rank, step), and batches from (seed, step).
The LR schedule runs over ``schedule_steps`` (not ``max_steps``), so extending a run with a larger
``max_steps`` does not change its past.

Stopping: the first SIGINT/SIGTERM makes fit() finish the step in flight, save its resumable state (where it
has an ``out_dir``) and raise :class:`TrainingInterrupted`; a second Ctrl-C raises KeyboardInterrupt at once.
An interrupted fit() never returns, so no caller can mistake a cut-short run for a finished one. A step still
running ``stop_grace_s`` after the first signal is aborted (nothing of it is saved; the last checkpoint stays
as it was): a watchdog thread re-signals the main thread, which interrupts any Python-level wait; after a
SIGTERM, a main thread stuck that long again inside one native operation ends the process (exit 130).

Divergence: a non-finite loss or gradient norm stops the run before that update is applied, and a state is
saved only after its own loss was seen finite — a forward pass on the next batch (or the evaluation, when
one just ran) and a check that every parameter is finite, just before the save — so a checkpoint on disk is
always the last good state; :class:`TrainingDiverged` says which step it holds.

The writer lock of ``out_dir`` (checkpoint.writer_lock) is held for the whole of fit() on the main rank, and
before the first step the run's memory is estimated (train/memory.py) and a run that cannot fit refused.
Resume = the same run: run-defining settings (optim.RUN_DEFINING, the batch geometry, ``extra_state``)
that differ from the saved run are refused unless ``args.override``, which records them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import torch
from torch import nn

from . import checkpoint as ckpt
from . import expert_parallel as ep_mod
from . import flops as flops_mod
from . import memory as memory_mod
from .optim import TrainArgs, _flatten_optimizer, _unflatten_optimizer, build_optimizer, lr_at, resolve_device  # noqa: F401
from .parallel import (DistInfo, all_reduce_mean, barrier, full_model_state, full_optimizer_state,
                       init_distributed, load_full_optimizer_state, unwrap, wrap_model)
from .steps import (AuxOptimizer, Geometry, LossFn, MetricsWriter, autocast, evaluate, load_resume,  # noqa: F401
                    resolve_precision, routing_terms, run_changes, split_loss)

log = logging.getLogger("morphlm.train")


class TrainingDiverged(RuntimeError):
    """The loss, the gradient norm or the weights became NaN/inf. The offending update was not applied and the
    state was not saved: ``saved_step`` is the step the checkpoint in ``out_dir`` holds (None: nothing saved)."""

    def __init__(self, message: str, *, step: int | None = None, saved_step: int | None = None,
                 out_dir: str | None = None) -> None:
        super().__init__(message)
        self.step, self.saved_step, self.out_dir = step, saved_step, out_dir


def _brief(value: Any, limit: int = 70) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class TrainingInterrupted(KeyboardInterrupt):
    """A SIGINT/SIGTERM stopped fit() before ``max_steps``: nothing it computed is final.

    ``step``: the (local) step reached; ``out_dir``: the directory holding the resumable state fit() saved
    (None when it had no out_dir, or stopped before training anything); ``resume_hint``: how to continue,
    which a verb may replace with its own wording (e.g. "rerun the same command"). A KeyboardInterrupt, so
    ``except Exception`` blocks (per-arm error recording, worker pools) do not swallow it."""

    def __init__(self, step: int, out_dir: str | Path | None = None, resume_hint: str | None = None) -> None:
        self.step = int(step)
        self.out_dir = str(out_dir) if out_dir is not None else None
        if resume_hint is None:
            resume_hint = ("continue it with the same command and --resume auto" if self.out_dir else
                           "nothing was saved: rerun the command to start again")
        self.resume_hint = resume_hint
        super().__init__(self.step, self.out_dir, self.resume_hint)

    def __str__(self) -> str:
        where = f"; its state is saved in {self.out_dir}" if self.out_dir else ""
        return f"stopped by a signal at step {self.step}{where} — {self.resume_hint}"


class BatchSource(Protocol):
    def train_batch(self, step: int) -> dict[str, torch.Tensor]: ...

    def val_batches(self) -> list[dict[str, torch.Tensor]]: ...


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
    """A finished fit() (an interrupted one raises :class:`TrainingInterrupted` instead)."""

    steps: int
    tokens: int
    flops: float
    final_loss: float | None
    val_loss: float | None
    metrics: dict[str, Any]
    out_dir: str | None
    precision: str = "fp32"  # what the run computed in (bf16 autocast or fp32): "auto" resolved on its device


# ---------------------------------------------------------------------------------------------- stop handling
class StopScope:
    """One stop request shared by every fit() run inside ``with StopScope() as scope:``, for drivers that call
    fit() many times (benchmarks, searches). Without a scope each fit() installs its own signal handlers, so a
    driver that caught one fit()'s TrainingInterrupted would start the next at full length, and a second
    Ctrl-C would count as a new first one. Inside a scope, once any fit() was asked to stop,
    ``scope.requested`` is set, every later fit() raises TrainingInterrupted at once (before its first step,
    writing nothing), and a second Ctrl-C raises KeyboardInterrupt. Drivers check ``scope.requested`` before
    caching a result."""

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


class _StepAborted(KeyboardInterrupt):
    """Raised in the main thread when the step in flight outlived the stop grace period (see _StopFlag)."""


class _StopFlag:
    """First SIGINT/SIGTERM asks the loop to save and stop at the next step boundary; a second signal aborts.
    Inside a :class:`StopScope` whose stop was already requested, it starts out requested.

    The first signal also starts a watchdog: if the step in flight is still running ``grace_s`` later (the loop
    has not reached the boundary where it saves and stops), the watchdog sends SIGINT to the main thread,
    whose handler raises :class:`_StepAborted` there (a signal, unlike ``_thread.interrupt_main``, also breaks
    a blocking wait such as a sleep or a lock). A save in progress is never aborted: the loop stops right after
    it. Native code cannot be interrupted from Python; so after a SIGTERM — a request to end the process — a
    main thread still inside the step ``grace_s`` after that second signal makes the watchdog end the process
    (exit 130; the store is kill-safe: the last checkpoint is intact)."""

    def __init__(self, grace_s: float = 10.0, saved: Callable[[], str] = lambda: "") -> None:
        self.requested = any(scope.requested for scope in _SCOPES)
        self.grace_s = float(grace_s)
        self._saved = saved  # what is on disk, for the abort messages
        self._old: dict[int, Any] = {}
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._saving = False
        self._abort_sent = False
        self._signum: int | None = None
        self._main = threading.main_thread().ident
        self._watchdog: threading.Thread | None = None

    def __enter__(self):
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            self._old = {}
        return self

    def _handle(self, signum, frame):
        if self._abort_sent and signum == signal.SIGINT:  # the watchdog's signal (or a second Ctrl-C after it)
            if self._saving or self._done.is_set():
                return  # the loop is saving (it stops right after) or has finished
            raise _StepAborted
        if self.requested and (signum == signal.SIGINT or self._signum is not None):
            raise KeyboardInterrupt  # a second signal: abort at once
        self.requested = True
        self._signum = signum
        for scope in _SCOPES:
            scope.requested = True
        log.warning("stop requested (signal %d): saving at the end of this step; press Ctrl-C again to abort "
                    "(a step still running %gs from now is aborted unsaved)", signum, self.grace_s)
        self._watchdog = threading.Thread(target=self._watch, name="morphlm-stop-watchdog", daemon=True)
        self._watchdog.start()

    @contextlib.contextmanager
    def saving(self):
        """The loop is writing a checkpoint: the watchdog leaves it alone."""
        with self._lock:
            self._saving = True
        try:
            yield
        finally:
            with self._lock:
                self._saving = False

    def _wait_not_saving(self) -> bool:
        """Wait until no save is in progress; False when the loop finished meanwhile."""
        while True:
            with self._lock:
                if self._done.is_set():
                    return False
                if not self._saving:
                    return True
            self._done.wait(0.05)

    def _watch(self) -> None:
        if self._done.wait(self.grace_s) or not self._wait_not_saving():
            return
        with self._lock:
            if self._saving or self._done.is_set():
                return
            self._abort_sent = True
            log.warning("the step in flight is still running %gs after the stop request: aborting it (nothing of "
                        "it is saved)%s", self.grace_s, self._saved())
            signal.pthread_kill(self._main, signal.SIGINT)
        if self._signum != signal.SIGTERM:
            return
        if self._done.wait(self.grace_s) or not self._wait_not_saving():
            return
        with self._lock:
            if self._saving or self._done.is_set():
                return
            sys.stderr.write(f"interrupted: the step in flight ignored SIGTERM for {2 * self.grace_s:g}s (it is "
                             f"inside native code): ending the process; nothing of that step was saved"
                             f"{self._saved()}\n")
            sys.stderr.flush()
            os._exit(130)

    def __exit__(self, *exc):
        with self._lock:  # the watchdog sends nothing after this
            self._done.set()
        if self._watchdog is not None:  # it returns at once now; no thread of fit() outlives it
            self._watchdog.join(timeout=5)
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


# ---------------------------------------------------------------------------------------------- the run
class _Run:
    """One fit() call: set up in ``__init__``; ``train()`` runs the steps (``_backward`` computes one step's
    gradients, ``_read`` checks them, ``_update`` applies them, ``_record`` logs and evaluates, ``_check_state``
    and ``_save`` write a checkpoint of a state seen finite, ``_interrupted`` handles a stop)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn | None, data: BatchSource, args: TrainArgs,
                 callbacks: Iterable[Any], *, tokenizer_json: str | None, lineage: dict[str, Any] | None,
                 extra_state: dict[str, Any] | None, step_offset: int, step_flops: Callable[[int], float] | None,
                 aux_modules: nn.Module | None) -> None:
        args.validate()
        self.args, self.data, self.loss_fn = args, data, loss_fn or model_loss
        self.callbacks = list(callbacks)
        self.tokenizer_json, self.extra_state = tokenizer_json, extra_state
        self.step_offset, self.step_flops = step_offset, step_flops
        device = resolve_device(args.device)
        self.info = info = init_distributed(device.type)
        if device.type == "cuda" and info.enabled:
            device = torch.device("cuda", info.local_rank)
        self.device = device
        # what this run computes in: "auto" is bf16 autocast on CUDA and on CPUs with native bf16 matmuls
        # (steps.resolve_precision); logged with every metrics record and returned in FitResult.precision
        self.precision = resolve_precision(device, args.precision)
        self.out_dir = Path(args.out_dir) if args.out_dir else None
        self.cfg = unwrap(model).config

        self.resume_state, optim_tensors = load_resume(self.out_dir, args, model)
        rs = self.resume_state
        self.start_step = int(rs["step"]) if rs else 0
        self.saved_step: int | None = self.start_step if rs is not None else None  # what the checkpoint holds
        tokens, flops_done = (int(rs["tokens"]), float(rs["flops"])) if rs else (0, 0.0)
        if rs is not None and info.is_main:
            log.info("resuming %s at step %d", self.out_dir, self.start_step)
        if args.schedule_steps is None:
            args.schedule_steps = args.max_steps
        if args.warmup_steps > args.schedule_steps and info.is_main:
            log.warning("warmup_steps=%d is longer than the LR schedule (%d steps): the learning rate never reaches "
                        "lr=%g", args.warmup_steps, args.schedule_steps, args.lr)

        # the data decides the global batch (sequences per optimizer step) and the sequence length
        self.geo = Geometry.of(data.train_batch(self.start_step + step_offset), info, args.micro_batch_size)
        self.lineage = dict(lineage or {})
        self.override: dict[str, dict[str, Any]] | None = None
        if rs is not None:
            self._same_run(rs)
        if args.check_memory:
            self._check_memory(model, aux_modules, device)
        self.flops_per_step = (args.flops_per_step or flops_mod.training_flops_per_token(self.cfg, self.geo.seq_len)
                               * self.geo.tokens_per_step)

        torch.manual_seed(args.seed)
        self.raw = unwrap(model).to(device)
        self.wrapped = wrap_model(self.raw, args.parallel, info, device, args.expert_parallel)
        self.optimizer = build_optimizer(self.wrapped, args, device)
        self.aux = AuxOptimizer(aux_modules, args, device, rs, optim_tensors)
        if rs is not None and optim_tensors:
            load_full_optimizer_state(self.wrapped, self.optimizer,
                                      _unflatten_optimizer(optim_tensors, rs["param_groups"]))
            if "rng.cpu" in optim_tensors:
                torch.set_rng_state(optim_tensors["rng.cpu"])
        self.runner = torch.compile(self.wrapped) if args.compile else self.wrapped
        self.device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None

        out_dir = self.out_dir
        self.writer = MetricsWriter(out_dir / ckpt.METRICS_FILE if out_dir else None, self.start_step, info.is_main)
        if self.override is not None:
            self.writer.write({"override": self.override, "step": self.start_step})
        if args.tensorboard and info.is_main and out_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer.tb = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                log.warning("--tensorboard needs the tensorboard package (pip install tensorboard); "
                            "continuing without it")
        self.fstate = FitState(step=self.start_step, tokens=tokens, flops=flops_done, model=self.runner,
                               raw_model=self.raw, optimizer=self.optimizer, dist=info)
        self.last_loss: float | None = None
        self.val_metrics: dict[str, float] = {}
        self.bar = None

    # -- setup checks --------------------------------------------------------------------------------------
    def _same_run(self, rs: dict[str, Any]) -> None:
        """Resume = the same run: refuse changed run-defining settings unless ``args.override``, which records
        them (a metrics.jsonl record, written once the writer is open, and lineage.json's ``overrides``)."""
        if self.out_dir is not None:
            saved_lineage = ckpt.read_lineage(self.out_dir) or {}
            prior = saved_lineage.get("overrides")
            if isinstance(prior, list) and "overrides" not in self.lineage:
                self.lineage["overrides"] = list(prior)
        changes = run_changes(rs, self.args, self.extra_state, self.geo)
        if not changes:
            return
        listed = ", ".join(f"{k} {_brief(old)} vs {_brief(new)}" for k, (old, new) in changes.items())
        if not self.args.override:
            raise ckpt.CheckpointError(
                f"{self.out_dir} holds a run with other settings (saved vs asked: {listed}); resuming would not "
                f"continue the same run. Resume with the saved settings, pass --override to continue with the new "
                f"ones (the change is recorded in metrics.jsonl and lineage.json), or start a new run in another --out")
        self.override = {k: {"saved": old, "now": new} for k, (old, new) in changes.items()}
        self.lineage["overrides"] = [*self.lineage.get("overrides", []),
                                     {"step": self.start_step, "changes": self.override}]
        if self.info.is_main:
            log.warning("--override: resuming %s at step %d with changed settings (saved vs now: %s)", self.out_dir,
                        self.start_step, listed)

    def _check_memory(self, model: nn.Module, aux_modules: nn.Module | None, device: torch.device) -> None:
        """Refuse a run whose estimated memory (train/memory.py) exceeds what ``device`` has available."""
        from ..model.config import ModelConfig

        if not isinstance(self.cfg, ModelConfig):
            return
        params = [p for p in unwrap(model).parameters()]
        if aux_modules is not None:
            params += list(aux_modules.parameters())
        n_params = sum(p.numel() for p in params)
        n_trainable = sum(p.numel() for p in params if p.requires_grad)
        resident = sum(p.numel() * p.element_size() for p in params if p.device.type == device.type)
        shards = self.info.world_size if self.args.parallel == "fsdp" and self.info.enabled else 1
        memory_mod.check_fits(self.cfg, per_process_batch=self.geo.per_rank, seq_len=self.geo.seq_len,
                              micro_batch=self.geo.micro, device=device, precision=self.args.precision,
                              n_params=n_params, n_trainable=n_trainable, resident=resident, shards=shards,
                              where="this training run")

    # -- saving ------------------------------------------------------------------------------------------
    def _on_disk(self) -> str:
        """What the checkpoint directory holds now, for error messages."""
        if self.out_dir is None:
            return ""
        if self.saved_step is None:
            return f"; nothing was saved to {self.out_dir}"
        return f"; the checkpoint in {self.out_dir} holds step {self.saved_step}, the last good state"

    def _check_state(self, step: int, batches: list[dict[str, torch.Tensor]], evaluated: bool) -> None:
        """Before saving the state after ``step`` updates: its parameters are finite and so is its loss — the
        evaluation's when one just ran, else a forward pass (no gradients, dropout off, RNG untouched) on
        ``batches``. Raises TrainingDiverged, so a state that gives NaN/inf is never saved."""
        nonfinite = torch.zeros((), device=self.device)
        for p in [*self.wrapped.parameters(), *self.aux.params]:
            local = p.to_local() if hasattr(p, "to_local") else p  # an FSDP2 shard
            nonfinite += (~torch.isfinite(local.detach())).sum().float()
        if evaluated and "val_loss" in self.val_metrics:
            loss = torch.tensor(float(self.val_metrics["val_loss"]), device=self.device)
            what = "validation loss"
        else:
            loss = self._probe(batches)
            what = "loss on the next batch"
        values = torch.stack([loss.float(), nonfinite])
        if self.info.enabled:
            values = all_reduce_mean(values, self.info)
        loss_v, bad = values.tolist()
        if math.isfinite(loss_v) and bad == 0:
            return
        problem = ("its weights hold non-finite values" if bad else f"its {what} is {loss_v}")
        raise TrainingDiverged(
            f"the state after step {step} diverged ({problem}); it was not saved{self._on_disk()}. Lower --lr "
            f"(now {self.args.lr:g}), raise --warmup-steps, or check the data for bad tokens, then resume with "
            f"--resume auto", step=step, saved_step=self.saved_step, out_dir=str(self.out_dir) if self.out_dir else None)

    @torch.no_grad()
    def _probe(self, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """Mean loss of the current weights on ``batches`` (eval mode, no gradients; the RNG is restored)."""
        model = self.wrapped
        was_training = model.training
        model.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        total = torch.zeros((), device=self.device)
        try:
            with torch.random.fork_rng(devices=devices):
                for mb in batches:
                    with autocast(self.device, self.precision):
                        loss, _ = split_loss(self.loss_fn(model, mb))
                    total += loss.detach().float()
        finally:
            model.train(was_training)
        return total / max(len(batches), 1)

    def _save(self, step: int, next_batches: list[dict[str, torch.Tensor]] | None = None) -> None:
        """Checkpoint (weights, optimizer, RNG, trainer state, lineage) at ``step``, atomically; all ranks call.
        ``next_batches``: this rank's micro-batches of step ``step`` (the one a resume starts with), whose shape
        the trainer state records (built here when not given)."""
        if self.out_dir is None:
            return
        if next_batches is None:
            next_batches = self._prepare(step)
        next_len = int(next_batches[0]["input_ids"].shape[1])
        args, info, fstate = self.args, self.info, self.fstate
        model_state = full_model_state(self.wrapped)
        osd = full_optimizer_state(self.wrapped, self.optimizer)
        if info.is_main:
            tensors, groups = _flatten_optimizer(osd)
            tensors["rng.cpu"] = torch.get_rng_state()
            aux_groups = self.aux.save_into(tensors)
            trainer = {
                "step": step, "tokens": fstate.tokens, "flops": fstate.flops,
                "schedule_steps": args.schedule_steps, "param_groups": groups,
                "args": {k: v for k, v in asdict(args).items()},
                "world_size": info.world_size, "data_cursor": {"step": step, "seed": args.seed},
                "geometry": {"batch_size": self.geo.global_batch, "seq_len": next_len},
                "torch": torch.__version__, **({"aux_param_groups": aux_groups} if aux_groups else {}),
                **(self.extra_state or {}),
            }
            self.lineage.setdefault("verb", "train")
            self.lineage["flops"] = fstate.flops
            self.lineage["tokens"] = fstate.tokens
            self.lineage["steps"] = step
            ckpt.save_checkpoint(self.out_dir, model_state, self.cfg, tokenizer_json=self.tokenizer_json,
                                 optimizer_tensors=tensors, trainer_state=trainer, lineage=self.lineage)
            for cb in self.callbacks:
                if hasattr(cb, "on_save"):
                    cb.on_save(fstate, self.out_dir)
        barrier(info)
        self.saved_step = step

    # -- one step ----------------------------------------------------------------------------------------
    def _prepare(self, step: int) -> list[dict[str, torch.Tensor]]:
        return self.geo.micro_batches(self.data.train_batch(step + self.step_offset), self.info, self.device)

    def _backward(self, step: int, micro_batches: list[dict[str, torch.Tensor]]):
        """Forward/backward over the micro-batches of ``step`` and the gradient norm (clipped when grad_clip > 0);
        the update itself is :meth:`_update`, applied only once :meth:`_read` saw the loss and norm finite.
        Returns (lr, stats, the extra metrics' names): stats = [mean loss, grad norm, extras...] as device
        tensors."""
        args, info, wrapped = self.args, self.info, self.wrapped
        if hasattr(self.raw, "on_train_step_begin"):  # state the model advances itself (growth mask ramps)
            self.raw.on_train_step_begin()
        for cb in self.callbacks:
            if hasattr(cb, "on_step_begin"):
                cb.on_step_begin(self.fstate)
        lr = lr_at(step + self.step_offset, args)
        for group in self.optimizer.param_groups + self.aux.param_groups:
            group["lr"] = lr
        torch.manual_seed(args.seed + 1_000_003 * info.rank + step + self.step_offset)
        n_micro = self.geo.n_micro
        loss_sum = torch.zeros((), device=self.device)
        extras: dict[str, torch.Tensor] = {}
        for i, mb in enumerate(micro_batches):
            last = i == n_micro - 1
            sync = contextlib.nullcontext()
            if info.enabled and not last and hasattr(wrapped, "no_sync"):
                sync = wrapped.no_sync()
            if info.enabled and hasattr(wrapped, "set_requires_gradient_sync"):
                wrapped.set_requires_gradient_sync(last)
            with sync, autocast(self.device, self.precision):
                loss, extra = split_loss(self.loss_fn(self.runner, mb))
            aux, routing = routing_terms(self.raw, self.device)  # MoE balancing losses (logged as loss_aux)
            ((loss if aux is None else loss + aux) / n_micro).backward()
            loss_sum += loss.detach().float()
            extra = {**extra, **routing}
            for k, v in extra.items():
                extras[k] = extras.get(k, 0.0) + v.detach().float() / n_micro
        stats = [loss_sum / n_micro]
        ep_mod.finish_expert_grads(self.raw)  # expert parallelism: the experts' gradient of the mean loss
        aux_params = self.aux.params
        if aux_params and info.enabled:  # the aux module is not wrapped: average its grads by hand
            for p in aux_params:
                if p.grad is not None:
                    p.grad.copy_(all_reduce_mean(p.grad, info))
        # the global norm is always measured (a non-finite one stops the run); clipping at inf scales by 1
        max_norm = args.grad_clip if args.grad_clip > 0 else math.inf
        clip_params = list(wrapped.parameters())
        if args.parallel != "fsdp" or not info.enabled:
            clip_params += aux_params  # FSDP2 norms are DTensors: aux is then clipped alone
        elif aux_params:
            torch.nn.utils.clip_grad_norm_(aux_params, max_norm)
        if ep_mod.of(self.raw) is not None:  # expert shards: each rank's squares count once
            norm = ep_mod.clip_grad_norm(clip_params, max_norm, self.raw)
        else:
            norm = torch.nn.utils.clip_grad_norm_(clip_params, max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
            norm = norm.full_tensor()
        stats.append(norm.float())
        stats.extend(extras.values())
        return lr, stats, list(extras.keys())

    def _update(self) -> None:
        """The optimizer step of the gradients :meth:`_backward` left (the model's and the aux modules')."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.aux.step()

    def _read(self, step: int, stats: list[torch.Tensor], stop_requested: bool) -> tuple[list[float], bool]:
        """The step's statistics on the host (averaged over ranks) and whether any rank was asked to stop;
        raises TrainingDiverged on a non-finite loss or gradient norm — before the update is applied."""
        values = torch.stack([t.to(self.device) for t in stats])
        stop_now = stop_requested
        if self.info.enabled:
            flag = torch.tensor([float(stop_requested)], device=self.device)
            values = all_reduce_mean(torch.cat([values, flag]), self.info)
            stop_now = bool(values[-1] > 0)
            values = values[:-1]
        vals = values.tolist()
        if not (math.isfinite(vals[0]) and math.isfinite(vals[1])):
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(
                f"{'loss' if not math.isfinite(vals[0]) else 'gradient norm'} became "
                f"{vals[0] if not math.isfinite(vals[0]) else vals[1]} at step {step + 1}; that update was not "
                f"applied{self._on_disk()}. Lower --lr (now {self.args.lr:g}), raise --warmup-steps, or check the "
                f"data for bad tokens, then resume with --resume auto",
                step=step + 1, saved_step=self.saved_step, out_dir=str(self.out_dir) if self.out_dir else None)
        return vals, stop_now

    # -- logging and evaluation ----------------------------------------------------------------------------
    def _record(self, step: int, lr: float, vals: list[float], extra_names: list[str], done: bool, dt: float,
                elapsed: float) -> bool:
        """Count the step, build its metrics record, evaluate when due, write the record and run the step-end
        callbacks. Returns whether it evaluated."""
        args, fstate = self.args, self.fstate
        fstate.tokens += self.geo.tokens_per_step
        this_flops = self.flops_per_step if self.step_flops is None else float(self.step_flops(step))
        fstate.flops += this_flops
        step_loss = vals[0]
        self.last_loss = step_loss
        record: dict[str, Any] = {
            "step": step + 1, "tokens": fstate.tokens, "flops": fstate.flops, "loss": step_loss,
            "lr": lr, "tok_per_s": self.geo.tokens_per_step / dt, "elapsed_s": elapsed, "precision": self.precision,
        }
        rest = vals[2:]
        if args.grad_clip > 0:
            record["grad_norm"] = vals[1]
        record.update(zip(extra_names, rest))
        m = flops_mod.mfu(this_flops / dt, self.device_name)
        if m is not None:
            record["mfu"] = m
        fstate.step = step + 1
        fstate.last_metrics = record
        evaluated = False
        if (args.eval_every and (step + self.step_offset + 1) % args.eval_every == 0) or (done and args.eval_at_end):
            self.val_metrics = evaluate(self.runner, self.loss_fn, self.data.val_batches(), self.device, self.precision)
            record.update(self.val_metrics)
            for cb in self.callbacks:
                if hasattr(cb, "on_eval"):
                    cb.on_eval(fstate, self.val_metrics)
            evaluated = True
        self.writer.write(record)
        self._progress(record)
        for cb in self.callbacks:
            if hasattr(cb, "on_step_end"):
                cb.on_step_end(fstate, record)
        return evaluated

    def _progress(self, record: dict[str, Any]) -> None:
        if self.bar is None:
            return
        post = {"loss": f"{record['loss']:.3f}", "lr": f"{record['lr']:.2e}", "tok/s": f"{record['tok_per_s']:.0f}",
                "PFLOP": f"{self.fstate.flops / 1e15:.3g}"}
        if "mfu" in record:
            post["mfu"] = f"{record['mfu']:.1%}"
        if "val_loss" in record:
            post["val"] = f"{record['val_loss']:.3f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    # -- stopping ----------------------------------------------------------------------------------------------
    def _interrupted(self, step: int, saved: bool) -> TrainingInterrupted:
        return TrainingInterrupted(step, self.out_dir if saved and self.out_dir is not None else None)

    def _aborted(self) -> TrainingInterrupted:
        """The step in flight outlived the stop grace period and was aborted: nothing of it was saved."""
        what = (f"the step in flight was still running {self.args.stop_grace_s:g}s after the stop request and was "
                f"aborted, so nothing of it was saved")
        if self.out_dir is not None and self.saved_step is not None:
            return TrainingInterrupted(self.saved_step, self.out_dir,
                                       f"{what}; the checkpoint there (step {self.saved_step}) is intact — continue "
                                       f"it with the same command and --resume auto")
        return TrainingInterrupted(self.fstate.step, None, f"{what}; nothing was saved: rerun the command to start "
                                                           f"again")

    # -- the loop ----------------------------------------------------------------------------------------------
    def result(self) -> FitResult:
        return FitResult(self.fstate.step, self.fstate.tokens, self.fstate.flops, self.last_loss,
                         self.val_metrics.get("val_loss"), {**self.fstate.last_metrics, **self.val_metrics},
                         str(self.out_dir) if self.out_dir else None, self.precision)

    def train(self) -> FitResult:
        args, start = self.args, self.start_step
        if start >= args.max_steps:
            if self.info.is_main:
                log.info("%s is already at step %d >= max_steps %d: nothing to train", self.out_dir, start,
                         args.max_steps)
            self.writer.close()
            ep_mod.unshard_experts(self.raw)
            rs = self.resume_state
            return FitResult(start, self.fstate.tokens, self.fstate.flops, None,
                             rs.get("val_loss") if rs else None, {}, str(self.out_dir) if self.out_dir else None,
                             self.precision)
        try:
            with _StopFlag(args.stop_grace_s, self._on_disk) as stop:
                if stop.requested:  # a StopScope whose stop was requested: nothing new is trained or written
                    raise self._interrupted(start, saved=start > 0)
                if self.info.is_main:
                    n_params = ep_mod.num_parameters(self.raw)  # expert shards counted in full
                    log.info("%s", flops_mod.describe(self.cfg, n_params, self.geo.seq_len))  # the resolved model
                    log.info("training steps %d-%d%s (Ctrl-C or SIGTERM stops at the end of a step%s)", start + 1,
                             args.max_steps, f" into {self.out_dir}" if self.out_dir else "",
                             " and saves it" if self.out_dir else "")
                    log.info("precision %s%s", "bf16 autocast" if self.precision == "bf16" else "fp32",
                             " (auto on this device)" if args.precision == "auto" else "")
                if args.progress and self.info.is_main:
                    from ..progress import progress_bar

                    self.bar = progress_bar(total=args.max_steps, initial=start, desc="train", unit="step")
                try:
                    self._steps(stop)
                except _StepAborted:
                    raise self._aborted() from None
        finally:
            if self.bar is not None:
                self.bar.close()
            self.writer.close()
        ep_mod.unshard_experts(self.raw)  # expert parallelism: the full experts again, for use after fit()
        for cb in self.callbacks:
            if hasattr(cb, "on_train_end"):
                cb.on_train_end(self.fstate)
        return self.result()

    def _steps(self, stop: _StopFlag) -> None:
        """Each step: forward/backward, read (a non-finite loss or gradient norm stops here, before the update),
        update, record; a save is due at the end, every ``save_every`` steps or on a stop request, and goes
        ahead only for a state whose own loss was seen finite (:meth:`_check_state`)."""
        args = self.args
        t_last = time.perf_counter()
        t_start = t_last
        self.runner.train()
        micro_batches = self._prepare(self.start_step)
        for step in range(self.start_step, args.max_steps):
            self.fstate.step = step
            lr, stats, extra_names = self._backward(step, micro_batches)
            done = step + 1 == args.max_steps
            if not done:
                micro_batches = self._prepare(step + 1)  # CPU work overlaps the device finishing this step
            vals, stop_now = self._read(step, stats, stop.requested)
            self._update()
            now = time.perf_counter()
            dt = max(now - t_last, 1e-9)
            t_last = now
            evaluated = self._record(step, lr, vals, extra_names, done, dt, now - t_start)
            if evaluated:
                t_last = time.perf_counter()  # evaluation time is not training throughput
            if stop_now or done or (args.save_every and (step + 1) % args.save_every == 0):
                if self.out_dir is not None:
                    # the probe batches: the next step's (already prepared), or this step's at the end
                    self._check_state(step + 1, micro_batches, evaluated)
                    with stop.saving():
                        self._save(step + 1, None if done else micro_batches)
                t_last = time.perf_counter()
                if stop_now or (stop.requested and not done and self.out_dir is not None):
                    # (a stop asked for during a periodic save: the state just saved is where it stops)
                    raise self._interrupted(step + 1, saved=True)


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

    Callbacks may define ``on_step_begin(state)``, ``on_step_end(state, record)``, ``on_eval(state,
    metrics)``, ``on_save(state, out_dir)`` and ``on_train_end(state)`` (not called when the run is stopped).

    ``extra_state``: entries of the trainer state that identify the run (data and tokenizer fingerprints, the
    data spec, a search space): a resume compares them with the saved ones, like the run-defining arguments
    (optim.RUN_DEFINING) and the batch geometry, and refuses a change unless ``args.override``.

    Holds ``args.out_dir``'s writer lock for the whole run (main rank). Raises :class:`TrainingInterrupted`
    after a SIGINT/SIGTERM (having saved at the end of the step in flight, where there is an ``out_dir``),
    :class:`TrainingDiverged` on a non-finite loss, gradient norm or weights (nothing of the bad state saved),
    and memory.InsufficientMemory when the estimated memory exceeds what the device has (``check_memory``).
    """
    # an expert-parallel size that cannot shard this model is refused before anything is written
    ep_mod.check_expert_parallel(getattr(unwrap(model), "config", None), args.expert_parallel, parallel=args.parallel)
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 writes
    lock = ckpt.writer_lock(args.out_dir) if args.out_dir and main_rank else contextlib.nullcontext()
    with lock:  # re-entrant: a verb that took it already (train_run) keeps it; each save re-enters it
        run = _Run(model, loss_fn, data, args, callbacks, tokenizer_json=tokenizer_json, lineage=lineage,
                   extra_state=extra_state, step_offset=step_offset, step_flops=step_flops, aux_modules=aux_modules)
        return run.train()
