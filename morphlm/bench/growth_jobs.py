"""The growth benchmark's jobs: the corpus store and batch streams, source pretraining and one (arm, seed)
run, each cached (sources as checkpoints, arm results through :class:`morphlm.bench.runner.ResultCache`) and
runnable in a worker process from plain data (:func:`job`)."""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .growth_config import ARMS, SCHEMA_VERSION, Arm, BenchError, GrowthBenchConfig
from .common import bench_work_dir, prepare_store  # noqa: F401 (re-exported)
from .common import config_hash as _hash
from .runner import BenchInterrupted, ResultCache, interruptible, stop_requested, worker_setup


def default_work_dir() -> Path:
    return bench_work_dir("growth-bench")


def make_batches(cfg: GrowthBenchConfig, store, tokenizer, stream: str, seed: int):
    """The batch source of one stream (``target``, ``source:<name>``, ``operator``) of one seed. All target
    runs of a seed share stream ``target``; the validation windows are the same for every stream."""
    from ..data.batches import LMBatches, MLMBatches, derive_seed

    data_seed = seed if stream == "target" else derive_seed("growth-bench", stream, seed) % (2**31)
    if cfg.objective == "mlm":
        data = MLMBatches(store, cfg.batch_size, cfg.seq_len, mask_id=tokenizer.mask_id,
                          vocab_size=tokenizer.vocab_size, seed=data_seed, eval_batches=cfg.eval_batches)
        # the MLM validation masks depend on the batch seed: every stream of a seed is evaluated on the target's
        ref = MLMBatches(store, cfg.batch_size, cfg.seq_len, mask_id=tokenizer.mask_id,
                         vocab_size=tokenizer.vocab_size, seed=seed, eval_batches=cfg.eval_batches)
        data._val_cache = ref.val_batches()
        return data
    return LMBatches(store, cfg.batch_size, cfg.seq_len, seed=data_seed, eval_batches=cfg.eval_batches)


class _Curve:
    """fit callback: the validation curve as (step, cumulative FLOPs, val_loss)."""

    def __init__(self, offset_flops: float = 0.0) -> None:
        self.points: list[dict[str, float]] = []
        self.offset = offset_flops

    def on_eval(self, state, metrics) -> None:
        self.points.append({"step": int(state.step), "flops": self.offset + float(state.flops),
                            "val_loss": float(metrics["val_loss"])})


def _source_key(cfg: GrowthBenchConfig, name: str, seed: int, data_fp: str) -> str:
    src_cfg = cfg.model_config(cfg.sources[name])
    return f"{name}-s{seed}-" + _hash({"cfg": src_cfg.to_dict(), "args": asdict(cfg.train_args(seed, cfg.source_steps)),
                                       "batch": [cfg.batch_size, cfg.seq_len], "data": data_fp, "v": SCHEMA_VERSION})


def _arm_key(cfg: GrowthBenchConfig, arm: Arm, seed: int, data_fp: str) -> str:
    relevant = {"arm": asdict(arm), "target": cfg.model_config().to_dict(), "args": asdict(cfg.train_args(seed)),
                "batch": [cfg.batch_size, cfg.seq_len, cfg.eval_batches], "data": data_fp, "v": SCHEMA_VERSION,
                "objective": cfg.objective}
    if arm.source is not None:
        relevant["source"] = [cfg.sources[arm.source], asdict(cfg.train_args(seed, cfg.source_steps))]
    if arm.method in ("ligo", "mango"):
        relevant["operator_steps"] = cfg.operator_steps
    if arm.method == "msg":
        relevant["ramp"] = cfg.msg_ramp_steps
    return f"{arm.name}-s{seed}-{_hash(relevant)}"


def _loss_fn():
    from ..train.loop import model_loss

    return model_loss


# ---------------------------------------------------------------------------- one job (runs in a worker)
def train_source(cfg: GrowthBenchConfig, name: str, seed: int, work: Path) -> Path:
    """Pretrain (or reuse, or resume) source ``name`` of ``seed``; returns its checkpoint directory."""
    import torch

    from ..model import TransformerLM
    from ..train import checkpoint as ckpt
    from ..train.loop import fit

    tokenizer, store = prepare_store(cfg, show_progress=False)
    key = _source_key(cfg, name, seed, store.meta["corpus_fingerprint"])
    out = work / "sources" / key
    done_flag = out / "DONE"
    if done_flag.exists() and ckpt.has_checkpoint(out):
        return out
    data = make_batches(cfg, store, tokenizer, f"source:{name}", seed)
    steps = cfg.source_steps or cfg.steps
    args = cfg.train_args(seed, steps)
    args.out_dir, args.resume, args.save_every = str(out), "auto", max(steps // 4, 1)
    args.eval_every = 0
    torch.manual_seed(derive_model_seed("source", name, seed))
    model = TransformerLM(cfg.model_config(cfg.sources[name]))
    with interruptible(f"source {name} seed {seed}", f"{out} holds its state — rerun to resume it"):
        res = fit(model, _loss_fn(), data, args, tokenizer_json=tokenizer.to_json_str(),
                  lineage={"verb": "train", "preset": f"growth-bench source {name}", "parents": []})
    done_flag.write_text(json.dumps({"val_loss": res.val_loss, "flops": res.flops}))
    return out


def derive_model_seed(*parts) -> int:
    from ..data.batches import derive_seed

    return derive_seed("growth-bench-init", *parts) % (2**31)


def run_arm(cfg: GrowthBenchConfig, arm: Arm, seed: int, work: Path) -> dict[str, Any]:
    """Train the target by ``arm`` for ``seed``; returns (and caches) its result record."""
    import torch

    from ..grow.api import fresh_target, grow_model
    from ..train import checkpoint as ckpt
    from ..train.loop import evaluate, fit

    tokenizer, store = prepare_store(cfg, show_progress=False)
    key = _arm_key(cfg, arm, seed, store.meta["corpus_fingerprint"])
    cache = ResultCache(work / "arms")
    hit = cache.load(key)
    if hit is not None:
        return hit
    t0 = time.perf_counter()
    target_cfg = cfg.model_config()
    data = make_batches(cfg, store, tokenizer, "target", seed)
    args = cfg.train_args(seed)
    loss_fn = _loss_fn()
    source_flops, operator_flops, source_dir, info = 0.0, 0.0, None, {}
    source = None
    if arm.source is not None:
        source_dir = train_source(cfg, arm.source, seed, work)
        source = ckpt.load_model(source_dir)
        source_flops = ckpt.total_flops(source_dir)
        info["source_val_loss"] = evaluate(source, loss_fn, data.val_batches(), torch.device("cpu"),
                                            args.precision)["val_loss"]
    init_seed = derive_model_seed("target", seed)
    callbacks: list[Any] = []
    if arm.kind == "scratch":
        model = fresh_target(target_cfg, init_seed)
    elif arm.kind == "grow":
        opts = dict(arm.opts)
        if arm.method in ("ligo", "mango"):
            opts.setdefault("data", make_batches(cfg, store, tokenizer, "operator", seed))
            opts.setdefault("steps", cfg.operator_steps)
        if arm.method == "msg":
            opts.setdefault("ramp_steps", cfg.msg_ramp_steps if cfg.msg_ramp_steps is not None
                            else max(cfg.steps // 10, 1))
        out = grow_model(source, target_cfg, arm.method, seed=init_seed, **opts)
        model, operator_flops = out.model, float(out.flops)
        info["function_preserving"] = out.function_preserving
        if out.masks is not None:
            from ..grow.depth import carry_optimizer_state

            out.masks.optimizer_state = carry_optimizer_state(source, source_dir, model, out.masks.plan)
            callbacks.append(out.masks)
    elif arm.kind == "schedule":
        return _finish_schedule(cfg, arm, seed, cache, key, data, args, source, source_flops, target_cfg, info, t0)
    else:
        raise BenchError(f"arm {arm.name}: unknown kind {arm.kind!r}")
    curve = _Curve(offset_flops=operator_flops)
    init_loss = evaluate(model, loss_fn, data.val_batches(), torch.device("cpu"), args.precision)["val_loss"]
    curve.points.append({"step": 0, "flops": operator_flops, "val_loss": init_loss})
    callbacks.append(curve)
    torch.manual_seed(init_seed)
    with interruptible(f"{arm.name} seed {seed}", "rerun to redo it (finished runs are reused)"):
        res = fit(model, loss_fn, data, args, callbacks)
    if res.steps < args.max_steps:
        raise BenchError(f"{arm.name} seed {seed} stopped at step {res.steps} of {args.max_steps}; rerun to redo it "
                         f"(finished runs are reused)")
    record = {"arm": arm.name, "seed": seed, "key": key, "kind": arm.kind, "method": arm.method,
              "source": arm.source, "source_dir": str(source_dir) if source_dir else None,
              "source_flops": source_flops, "operator_flops": operator_flops, "train_flops": float(res.flops),
              "steps": res.steps, "initial_val_loss": init_loss, "final_val_loss": curve.points[-1]["val_loss"],
              "curve": curve.points, "wall_s": time.perf_counter() - t0, **info}
    return cache.store(key, record, f"{arm.name} seed {seed}")


def _finish_schedule(cfg, arm, seed, cache: ResultCache, key, data, args, source, source_flops, target_cfg, info, t0):
    from ..grow.schedules import run_schedule

    opts = dict(arm.opts)
    if arm.method == "two-stage":  # bert2BERT's l_b = 3 of 12 layers, scaled to the target's depth
        opts.setdefault("l_b", max(1, target_cfg.n_layers // 4))
    with interruptible(f"{arm.name} seed {seed}", "rerun to redo it (finished runs are reused)"):
        res = run_schedule(arm.method, target_cfg, data, args, source=source, seed=seed, **opts)
    curve = [{"step": int(p["step"]), "flops": float(p["flops"]), "val_loss": float(p["val_loss"])}
             for p in res.curve if p.get("val_loss") is not None]
    if not curve:
        raise BenchError(f"schedule {arm.method} returned no validation curve; it must evaluate every eval_every steps")
    train_flops = float(res.flops)
    record = {"arm": arm.name, "seed": seed, "key": key, "kind": arm.kind, "method": arm.method, "source": arm.source,
              "source_flops": float(source_flops), "operator_flops": 0.0, "train_flops": train_flops,
              "steps": int(curve[-1]["step"]), "initial_val_loss": curve[0]["val_loss"],
              "final_val_loss": curve[-1]["val_loss"], "curve": curve, "stages": _jsonable(getattr(res, "stages", None)),
              "wall_s": time.perf_counter() - t0, **info}
    return cache.store(key, record, f"{arm.name} seed {seed}")


def _jsonable(x: Any) -> Any:
    try:
        json.dumps(x)
        return x
    except TypeError:
        return repr(x)


def job(payload: dict[str, Any]) -> dict[str, Any]:
    """Worker entry point (:func:`morphlm.bench.runner.run_jobs`): one source pretraining or one (arm, seed) run,
    from plain data. A run cut short by a stop reports ``interrupted`` (it was not cached)."""
    worker_setup()
    cfg = GrowthBenchConfig(**payload["cfg"])
    work = Path(payload["work"])
    try:
        if payload["kind"] == "source":
            path = train_source(cfg, payload["name"], payload["seed"], work)
            return {"ok": True, "kind": "source", "path": str(path)}
        arm = ARMS[payload["name"]]
        return {"ok": True, "kind": "arm", "record": run_arm(cfg, arm, payload["seed"], work)}
    except BenchInterrupted as exc:
        return {"ok": False, "interrupted": True, "error": str(exc), "name": payload["name"], "seed": payload["seed"]}
    except Exception as exc:  # reported by the parent with the job's name
        if stop_requested():  # broken by the stop itself: an interruption, not a failure to record
            return {"ok": False, "interrupted": True, "error": f"{type(exc).__name__}: {exc}",
                    "name": payload["name"], "seed": payload["seed"]}
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(),
                "name": payload["name"], "seed": payload["seed"]}

