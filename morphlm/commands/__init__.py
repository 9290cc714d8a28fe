"""The CLI's commands. :mod:`.base` holds the typer apps and what every command shares (error handling,
logging, ``--version``), :mod:`.options` the typed options generated from the dataclasses; :mod:`.core` declares
the core verbs (train, eval, plot, generate, convert, grow, data, demo) and every other module one method
family's commands. :func:`load_all` imports them all, the core verbs first (``morphlm --help`` lists them in
that order); ``morphlm.cli`` calls it."""

from __future__ import annotations

import importlib
import pkgutil


def load_all() -> None:
    names = sorted(m.name for m in pkgutil.iter_modules(__path__))
    for name in ["core", *(n for n in names if n != "core")]:
        importlib.import_module(f"{__name__}.{name}")
