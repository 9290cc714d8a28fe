"""The one benchmark runner: per-(arm, seed) result cache, worker pool and stop handling, shared by
``morphlm bench growth`` and ``morphlm bench compression``.

* :class:`ResultCache` keeps one JSON file per finished (arm, seed) job (the caller names the file: a
  benchmark puts its settings/code fingerprint into the folder or the name); a rerun of the same command
  reuses every finished job, and an unreadable file counts as missing.
* :data:`STOP` is the run's :class:`~morphlm.train.loop.StopScope`: ``with STOP:`` around a run makes the
  first Ctrl-C / SIGTERM stop every later ``fit()`` of the run at once (a second Ctrl-C aborts), and
  :func:`check_stop` turns the request into :class:`BenchInterrupted` before anything is cached, so an
  interrupted run never leaves a finished-looking result. ``fit()`` itself raises
  :class:`~morphlm.train.loop.TrainingInterrupted` when a signal stops it; :func:`interruptible` turns that
  into :class:`BenchInterrupted` with what to do next, and :meth:`ResultCache.get_or_run` uses it.
* :func:`run_jobs` runs picklable jobs in this process (``workers <= 1``) or in a pool of single-threaded
  worker processes; in the pool, the parent catches the first Ctrl-C / SIGTERM (the workers get it from the
  terminal too and stop their own ``fit()``), waits for them, then raises :class:`BenchInterrupted`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

from ..io import write_atomic
import contextlib

from ..train.loop import StopScope, TrainingInterrupted
from .common import json_safe

log = logging.getLogger("morphlm.bench.runner")


class BenchInterrupted(KeyboardInterrupt):
    """A signal stopped the run; finished (arm, seed) results are cached, rerun the same command to continue."""


# One stop request per benchmark run (a run is ``with STOP: ...``); see the module docstring.
STOP = StopScope()


def stop_requested() -> bool:
    return STOP.requested


def check_stop(what: str) -> None:
    """Raise :class:`BenchInterrupted` when a stop was requested: ``what`` was cut short and is not cached."""
    if STOP.requested:
        raise BenchInterrupted(f"stopped by a signal during {what}; it was not cached — rerun the same command to "
                               f"continue (finished results are reused)")


_RERUN = "rerun the same command to continue (finished results are reused)"


@contextlib.contextmanager
def interruptible(what: str, resume: str = _RERUN):
    """Around training work of a benchmark: a ``fit()`` stopped by a signal (``TrainingInterrupted``), or work
    that finished although the run's stop was requested meanwhile, ends the run with :class:`BenchInterrupted`
    naming ``what`` and telling the user how to go on (``resume``)."""
    try:
        yield
    except TrainingInterrupted as exc:
        raise BenchInterrupted(f"stopped by a signal during {what}; {resume}") from exc
    if STOP.requested:
        raise BenchInterrupted(f"stopped by a signal during {what}; {resume}")


class ResultCache:
    """One JSON file per finished job under ``folder``: ``<name>.json``.

    ``store`` refuses (:class:`BenchInterrupted`) when the run's stop was requested, so a result computed by a
    ``fit()`` that a signal cut short is never cached. Non-finite floats are written as null (strict JSON)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def load(self, name: str) -> dict | None:
        """The cached result of job ``name``, or None when missing or unreadable (then it is recomputed)."""
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def store(self, name: str, result: dict, what: str | None = None) -> dict:
        check_stop(what or name)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path(name), json.dumps(json_safe(result), indent=1))
        return result

    def get_or_run(self, name: str, fn: Callable[[], dict], what: str | None = None) -> dict:
        """The cached result of job ``name``, else ``fn()`` (cached unless the run was stopped meanwhile)."""
        hit = self.load(name)
        if hit is not None:
            return hit
        with interruptible(what or name, f"it was not cached — {_RERUN}"):
            result = fn()
        return self.store(name, result, what)


# ------------------------------------------------------------------------------------------ worker pool
class _ParentStop:
    """While the parent waits on its workers: the first SIGINT/SIGTERM records the stop (the workers, in the
    same process group, stop their own ``fit()``), a second SIGINT aborts at once."""

    def __init__(self) -> None:
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_ParentStop":
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._old = {}
        return self

    def _handle(self, signum, frame) -> None:
        if STOP.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        STOP.requested = True
        log.warning("stop requested (signal %d): waiting for the workers to stop; press Ctrl-C again to abort",
                    signum)

    def __exit__(self, *exc) -> bool:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def _label(job: dict) -> str:
    return f"{job.get('name', '?')} seed {job.get('seed', '?')}"


def run_jobs(jobs: Iterable[dict], job_fn: Callable[[dict], dict], *, workers: int, desc: str,
             on_done: Callable[[dict, dict], None], progress: bool = True) -> None:
    """Run ``job_fn(job)`` for every job (plain, picklable dicts) and hand each ``(job, result)`` to ``on_done``
    in the parent as it finishes. ``workers <= 1`` runs them here, in order; otherwise in a process pool (fork
    where the platform has it: spawn would re-run the caller's ``__main__``). A job that reports
    ``{"interrupted": True}`` (or a stop requested in the parent) ends the run with :class:`BenchInterrupted`
    after the jobs in flight have stopped; finished jobs were handed to ``on_done`` (and cached by ``job_fn``)."""
    from ..progress import progress_bar

    jobs = list(jobs)
    bar = progress_bar(total=len(jobs), desc=desc, unit="run", disable=not progress)
    cut: list[str] = []

    def done(job: dict, res: dict) -> None:
        if res.get("interrupted"):
            STOP.requested = True
            cut.append(_label(job))
        else:
            on_done(job, res)
        bar.update(1)

    try:
        if workers <= 1:
            for job in jobs:
                bar.set_postfix_str(_label(job))
                done(job, job_fn(job))
                if STOP.requested:
                    break
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # stores are built; workers only read them
            with _ParentStop(), ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method)) as pool:
                futs = {pool.submit(job_fn, job): job for job in jobs}
                for fut in as_completed(futs):
                    job = futs[fut]
                    if fut.cancelled():
                        continue
                    done(job, fut.result())
                    bar.set_postfix_str(f"done {_label(job)}")
                    if STOP.requested:
                        for other in futs:
                            other.cancel()  # not started yet: never run
    finally:
        bar.close()
    if STOP.requested:
        raise BenchInterrupted(f"stopped by a signal during {desc}" + (f" ({', '.join(cut)} cut short)" if cut else "")
                               + "; finished runs are cached — rerun the same command to continue")


# ------------------------------------------------------------------------------------------ one training run
def fit_run(model: Any, data: Any, args: Any, out: Path, tokenizer: Any, *, what: str, preset: str,
              save_every: int, error: type[Exception]) -> tuple[Any, list[dict]]:
    """One (arm, seed) training run of an LM benchmark: ``fit()`` writes its checkpoint into ``out`` every
    ``save_every`` steps and resumes it when a previous run was cut short. A stop ends the run with
    :class:`BenchInterrupted` (``out`` keeps its state); a run that ended before ``args.max_steps`` raises
    ``error``. Returns fit's result and the run's metrics.jsonl records."""
    from ..train.loop import fit
    from ..train.metrics import read_metrics

    args.out_dir, args.resume, args.save_every = str(out), "auto", save_every
    with interruptible(what, f"{out} holds its state — rerun the same command to resume it"):
        res = fit(model, None, data, args, tokenizer_json=tokenizer.to_json_str(),
                  lineage={"verb": "train", "preset": preset, "parents": []})
    if res.steps < args.max_steps:
        raise error(f"{what} stopped at step {res.steps} of {args.max_steps}; rerun to resume it")
    return res, read_metrics(out)


def train_lm_arm(cfg: Any, arm: str, seed: int, work: Path, key: str, *, tokenizer: Any, store: Any,
                 init_label: str, preset: str, error: type[Exception],
                 describe: Callable[[Any, Any, Any, Any, list[dict]], dict],
                 warm_start: Callable[[Any], None] | None = None) -> dict:
    """One cached (arm, seed) run of an LM benchmark whose config has ``arm_config(arm)``, ``train_args(seed)``,
    ``batch_size``, ``seq_len``, ``eval_batches`` and ``steps``: the cached record under ``key`` when there is one;
    else a model seeded by ``derive_seed(init_label, arm, seed)`` (``warm_start(model)`` may load weights into it)
    is trained with :func:`fit_run` on the store's batches (resuming a cut run from ``work/runs/key``), and the
    record — arm, seed, key, model config, what ``describe(model, model_cfg, data, fit_result, records)`` returns,
    wall time — is cached and the run folder removed."""
    import shutil
    import time

    import torch

    from ..data.batches import LMBatches, derive_seed
    from ..model import TransformerLM

    out = work / "runs" / key

    def run() -> dict:
        t0 = time.perf_counter()
        model_cfg = cfg.arm_config(arm)
        data = LMBatches(store, cfg.batch_size, cfg.seq_len, seed=seed, eval_batches=cfg.eval_batches)
        torch.manual_seed(derive_seed(init_label, arm, seed) % (2**31))
        model = TransformerLM(model_cfg)
        if warm_start is not None:
            warm_start(model)
        res, records = fit_run(model, data, cfg.train_args(seed), out, tokenizer, what=f"{arm} seed {seed}",
                               preset=preset, save_every=max(cfg.steps // 4, 1), error=error)
        record = {"arm": arm, "seed": seed, "key": key, "config": model_cfg.to_dict(),
                  **describe(model, model_cfg, data, res, records)}
        record["wall_s"] = time.perf_counter() - t0
        return record

    record = ResultCache(work / "arms").get_or_run(key, run, f"{arm} seed {seed}")
    shutil.rmtree(out, ignore_errors=True)
    return record


def run_precision(records: list[dict], fallback: str) -> str | list[str]:
    """The precision a run trained in, from its metrics records: the one value, or the sorted list when it changed
    (a resumed run), or ``[fallback]`` when none was logged."""
    precisions = sorted({r.get("precision") for r in records if r.get("precision")})
    return precisions[0] if len(precisions) == 1 else (precisions or [fallback])


# ------------------------------------------------------------------------------------------ job outcomes
def worker_setup() -> None:
    """The start of a worker's job: torch threads from ``$MORPHLM_BENCH_THREADS`` (default 1, at least 1) and
    morphlm's log at WARNING (the parent reports progress)."""
    import torch

    torch.set_num_threads(max(int(os.environ.get("MORPHLM_BENCH_THREADS", "1")), 1))
    logging.getLogger("morphlm").setLevel(logging.WARNING)


def guarded_job(fn: Callable[[], dict]) -> dict:
    """A worker's body around ``fn()`` (one (arm, seed) record): ``{"ok": True, "record": ...}``; a stop (or any
    error raised while a stop was requested) ``{"ok": False, "interrupted": True, "error"}``; any other error
    ``{"ok": False, "error", "trace"}``, for the parent to report with the job's name (:class:`Outcomes`)."""
    try:
        return {"ok": True, "record": fn()}
    except BenchInterrupted as exc:
        return {"ok": False, "interrupted": True, "error": str(exc)}
    except Exception as exc:  # reported by the parent with the job's name
        if stop_requested():
            return {"ok": False, "interrupted": True, "error": f"{type(exc).__name__}: {exc}"}
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}


class Outcomes:
    """What :func:`run_jobs` handed back, by arm and seed: ``runs[arm][seed] = record`` for the jobs that finished
    and ``failures`` (arm, seed, error) for those that raised; pass :meth:`collect` as ``on_done``."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[int, dict]] = {}
        self.failures: list[dict] = []

    def collect(self, job: dict, res: dict) -> None:
        if res["ok"]:
            self.runs.setdefault(job["name"], {})[job["seed"]] = res["record"]
        else:
            log.error("%s seed %s failed: %s\n%s", job["name"], job["seed"], res["error"], res.get("trace", ""))
            self.failures.append({"arm": job["name"], "seed": job["seed"], "error": res["error"]})
