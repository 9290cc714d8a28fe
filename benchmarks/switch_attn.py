"""The Switch Attention benchmark as a script: the same thing as ``morphlm bench switch-attn``
(morphlm/bench/switch_attn.py).

Usage::

    python benchmarks/switch_attn.py           # full run: 3 seeds, five arms -> benchmarks/results/switch-attn.json
    python benchmarks/switch_attn.py --quick   # 1 seed, small sizes -> benchmarks/results/switch-attn-quick.json
    python benchmarks/switch_attn.py --table   # the README table from benchmarks/results/switch-attn.json

Every option of ``morphlm bench switch-attn`` is accepted (``--help`` lists them).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from morphlm.cli import app

    app(["bench", "switch-attn", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
