#!/usr/bin/env bash
# The one script for the GPU machine: environment report, GPU tests, GPU throughput benchmark.
#
#   bash benchmarks/gpu_check.sh          (from the repository root)
#
# Assumes a python3 with torch (CUDA) and transformers, and no network: morphlm is used from the tree
# through PYTHONPATH, nothing is installed. Each stage runs under `timeout` so one stage cannot eat the
# whole device budget; the benchmark rewrites its JSON after every run, so what it measured before a
# timeout survives. Results: benchmarks/results/throughput.json (the GPU section merged next to the
# committed CPU section) and a copy, with the logs and the README table, in $OUT (default ./gpu-check-out).
#
# Environment knobs: PYTHON (python3), TEST_TIMEOUT (90 s), BENCH_TIMEOUT (360 s), BENCH_ARGS (extra
# arguments for benchmarks/throughput.py, e.g. "--steps 10"), MORPHLM_COMMIT (recorded as the commit
# when the tree has no .git).
set -x
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-$PWD/gpu-check-out}"
RESULTS=benchmarks/results/throughput.json
mkdir -p "$OUT_DIR" benchmarks/results

nvidia-smi
"$PY" - <<'PYEOF'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| cudnn", torch.backends.cudnn.version(), "| available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
try:
    import transformers
    print("transformers", transformers.__version__)
except ImportError as exc:
    print("transformers missing:", exc)
PYEOF

tests_rc=0
if "$PY" -c "import pytest" 2>/dev/null; then
  timeout -k 10 "${TEST_TIMEOUT:-90}" "$PY" -m pytest -q -x -p no:cacheprovider -rs tests/test_gpu.py \
    2>&1 | tee "$OUT_DIR/test_gpu.log"
  tests_rc=${PIPESTATUS[0]}
else
  echo "pytest is not installed here: GPU tests skipped" | tee "$OUT_DIR/test_gpu.log"
  tests_rc=3
fi

# shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
timeout -k 15 "${BENCH_TIMEOUT:-360}" "$PY" benchmarks/throughput.py --device cuda --variants \
  --out "$RESULTS" ${BENCH_ARGS:-} 2>&1 | tee "$OUT_DIR/bench.log"
bench_rc=${PIPESTATUS[0]}

cp "$RESULTS" "$OUT_DIR/throughput.json"
"$PY" benchmarks/throughput.py --table --out "$OUT_DIR/throughput.json" | tee "$OUT_DIR/table.md"

echo "gpu_check: tests exit $tests_rc, benchmark exit $bench_rc"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
