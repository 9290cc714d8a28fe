"""Training throughput of morphlm against Hugging Face transformers at the same architecture, as a script:
the same thing as ``morphlm bench throughput`` (the logic and the protocol: morphlm/bench/throughput.py).

Usage::

    python benchmarks/throughput.py                             # CPU: gpt-20m and llama-20m at 8x256
    python benchmarks/throughput.py --quick --out /tmp/t.json   # tiny sizes, < 30 s (tests use this)
    python benchmarks/throughput.py --device cuda --variants    # gpt2-small at 16x1024, bf16, eager+compiled
    python benchmarks/throughput.py --table                     # the README tables from the results JSON
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere, installed or not
    sys.path.insert(0, str(ROOT))

from morphlm.bench.throughput import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
