"""The G-MAP benchmark as a script: the same thing as ``morphlm bench gmap``
(morphlm/bench/gmap.py).

Usage::

    python benchmarks/gmap.py                 # full run: 3 seeds, six arms -> benchmarks/results/gmap.json + .png
    python benchmarks/gmap.py --quick         # 1 seed, small sizes -> benchmarks/results/gmap-quick.json
    python benchmarks/gmap.py --table         # the README table from benchmarks/results/gmap.json

Every option of ``morphlm bench gmap`` is accepted (``--help`` lists them).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from morphlm.cli import app

    app(["bench", "gmap", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
