"""The depth-scaled sandwich norm benchmark as a script: the same thing as ``morphlm bench dssn``
(morphlm/bench/dssn.py).

Usage::

    python benchmarks/dssn.py                 # full run: 3 seeds, three arms -> benchmarks/results/dssn.json + .png
    python benchmarks/dssn.py --quick         # 1 seed, small sizes -> benchmarks/results/dssn-quick.json
    python benchmarks/dssn.py --table         # the README table from benchmarks/results/dssn.json

Every option of ``morphlm bench dssn`` is accepted (``--help`` lists them).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from morphlm.cli import app

    app(["bench", "dssn", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
