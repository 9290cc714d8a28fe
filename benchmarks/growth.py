"""The growth benchmark as a script: the same thing as ``morphlm bench growth`` (morphlm/bench/growth.py).

Usage::

    python benchmarks/growth.py                  # full run: 3 seeds, every arm -> benchmarks/results/growth.json + .png
    python benchmarks/growth.py --quick          # 1 seed, tiny sizes -> benchmarks/results/growth-quick.json
    python benchmarks/growth.py --table          # the README table from benchmarks/results/growth.json

Every option of ``morphlm bench growth`` is accepted (``--help`` lists them).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from morphlm.cli import app

    app(["bench", "growth", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
