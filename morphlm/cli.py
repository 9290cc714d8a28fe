"""The command line: ``morphlm`` is the typer ``app`` of :mod:`morphlm.commands.base`, onto which every module of
:mod:`morphlm.commands` (the core verbs, then each method family's) declares its commands; no logic here."""

from __future__ import annotations

from .commands import load_all as _load_commands
from .commands.base import _sigterm_as_interrupt, app, friendly  # noqa: F401  (app: the CLI; friendly: re-exported)

_load_commands()


def main() -> None:
    """The `morphlm` entry point. Every verb is wrapped by :func:`friendly`, which turns a stopped run
    (TrainingInterrupted is a KeyboardInterrupt) into one message and exit status 130; here SIGTERM is made to
    stop a verb outside fit() (which handles it as a stop request itself) as Ctrl-C does."""
    _sigterm_as_interrupt()
    app()


if __name__ == "__main__":
    main()
