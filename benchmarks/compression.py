"""Thin script for the compression benchmark; the logic lives in morphlm/bench/compression.py.

    python benchmarks/compression.py --quick          # smoke test (< 2 min on 2 cores)
    python benchmarks/compression.py                  # full run: 3 seeds, all arms (<= 30 min on 2 cores)
    python benchmarks/compression.py --table          # README table from benchmarks/results/compression.json

Same options as ``morphlm bench compression``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from morphlm.cli import app  # noqa: E402

if __name__ == "__main__":
    app(["bench", "compression", *sys.argv[1:]], prog_name="benchmarks/compression.py")
