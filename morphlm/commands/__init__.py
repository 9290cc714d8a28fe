"""Subcommands contributed by the method families (grow, compress, bench, ...).

Each module here imports ``app`` (and the sub-apps ``bench_app``, ``search_app``) plus ``friendly`` and
``_setup_logging`` from :mod:`morphlm.cli` and decorates its commands onto them; ``morphlm.cli`` imports every
module of this package once its own table is built. This keeps cli.py a thin table while letting each
method family own its commands' file.
"""

from __future__ import annotations

import importlib
import pkgutil


def load_all() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}")
