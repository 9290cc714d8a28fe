"""The mixture-of-experts benchmark as a script: the same thing as ``morphlm bench moe`` (morphlm/bench/moe.py).

Usage::

    python benchmarks/moe.py                  # full run: 3 seeds, six arms -> benchmarks/results/moe.json + .png
    python benchmarks/moe.py --quick          # 1 seed, tiny sizes -> benchmarks/results/moe-quick.json
    python benchmarks/moe.py --table          # the README table from benchmarks/results/moe.json

Every option of ``morphlm bench moe`` is accepted (``--help`` lists them).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from morphlm.cli import app

    app(["bench", "moe", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
