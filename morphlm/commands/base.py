"""What every command shares: the typer apps (``app`` and its ``data``, ``bench`` and ``search`` groups),
``--version``, logging set-up, and :func:`friendly` — known user errors become one clear line and exit 2, a
diverged run exits 1, a stopped run (Ctrl-C / SIGTERM) one message and exit 130."""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="morphlm: build, grow, shrink and reroute transformer language models, and measure them.")
data_app = typer.Typer(no_args_is_help=True, help="Corpora and token stores: list, prepare.")
app.add_typer(data_app, name="data")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: each writes benchmarks/results/<name>.json (+ plot).")
app.add_typer(bench_app, name="bench")
search_app = typer.Typer(no_args_is_help=True, help="Searches over layer mappings and architectures.")
app.add_typer(search_app, name="search")
reason_app = typer.Typer(no_args_is_help=True, help="Reasoning: the TRIGO trig-reduction gym, its prover, formal statement sets and answer discovery.")
app.add_typer(reason_app, name="reason")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("morphlm")
    except PackageNotFoundError:  # a source checkout that was never installed: pyproject.toml's version
        import re

        text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text(encoding="utf-8")
        found = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
        return found.group(1) if found else "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"morphlm {_version()}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                       help="Print morphlm's version and exit.")) -> None:
    """morphlm: build, grow, shrink and reroute transformer language models, and measure them."""


def _setup_logging(verbose: bool = False) -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _user_errors():
    from ..data import CorpusError, TaskError, TokenizerError
    from ..data.batches import BatchError
    from ..data.tokens import TokenStoreError
    from ..grow.errors import GrowthError
    from ..interop.hf import InteropError
    from ..model.config import ConfigError
    from ..train.checkpoint import CheckpointError
    from ..train.loop import TrainingDiverged

    return (ConfigError, CheckpointError, CorpusError, TokenizerError, TokenStoreError, TaskError, BatchError,
            InteropError, GrowthError, TrainingDiverged, FileNotFoundError, PermissionError, IsADirectoryError,
            NotADirectoryError, FileExistsError, ValueError)


def _one_line(exc: BaseException, limit: int = 2000) -> str:
    """An error as one line of at most ``limit`` characters (a crafted input cannot flood the terminal)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _stopped(exc: KeyboardInterrupt) -> None:
    """One clear message on stderr for a run stopped by Ctrl-C/SIGTERM (what was kept, how to go on); exit 130."""
    from ..train.loop import TrainingInterrupted

    if isinstance(exc, TrainingInterrupted):
        msg = f"interrupted: {exc}"
    elif str(exc):  # a verb's own stop report (e.g. a benchmark's)
        msg = f"interrupted: {exc}"
    else:  # a second Ctrl-C, or a signal outside training
        msg = ("aborted by a signal: the step in flight was not saved; checkpoints written before it are kept "
               "(rerun the same command, with --resume auto where the verb takes it)")
    typer.secho(msg, fg="yellow", err=True)
    raise typer.Exit(130)


def _sigterm_as_interrupt() -> None:
    """SIGTERM outside fit() (which handles it as a stop request itself) ends the verb like Ctrl-C does."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass


def friendly(fn):
    """Turn known user errors into one clear line on stderr and exit status 2 (1 for a diverged run), and a
    stopped run (TrainingInterrupted, a second Ctrl-C, a signal between trainings) into a message and exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt as exc:
            _stopped(exc)
        except _user_errors() as exc:
            from ..train.loop import TrainingDiverged

            typer.secho(f"error: {_one_line(exc)}", fg="red", err=True)
            raise typer.Exit(1 if isinstance(exc, TrainingDiverged) else 2) from None

    return wrapper


def _parse_extra(args: list[str]) -> dict[str, str]:
    """``--field value``, ``--field=value`` or ``--set field=value`` → {field: value}."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        tok = args[i]
        if not tok.startswith("--"):
            raise typer.BadParameter(f"unexpected argument {tok!r}; settings look like --d-model 128 or --set d_model=128")
        key = tok[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            i += 2
        else:
            value, i = "true", i + 1
        if key == "set":
            if "=" not in value:
                raise typer.BadParameter(f"--set {value!r}: use --set field=value")
            key, value = value.split("=", 1)
        out[key.replace("-", "_")] = value
    return out


def _parse_set(items: Optional[list[str]]) -> dict[str, str]:
    """``--set field=value`` items → {field: value} (typed later, by the field's option)."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"--set {item!r}: use --set field=value, e.g. --set d_model=128")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out
