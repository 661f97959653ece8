#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in phases that each fit a 10-minute command limit, for a
# machine that has nvcc, compute-sanitizer, torch, CuPy, pybind11, nvidia-cublas, pytest, cmake,
# ninja and scikit-build-core but no network. Prepare the missing wheels beside the checkout:
#   pip download --no-deps --python-version 3.12 --only-binary=:all: -d build/wheels \
#       scikit-build-core scipy-openblas32 pathspec
# then, on the GPU machine, with build/wheels copied along:
#   bash benchmarks/gpu_check.sh install    (~2 min: nvcc, 3 architectures)
#   bash benchmarks/gpu_check.sh test       (the whole suite, `cuda` tests included)
#   bash benchmarks/gpu_check.sh sanitize   (compute-sanitizer memcheck + racecheck, `cuda` tests)
#   bash benchmarks/gpu_check.sh bench      (bench_cuda.py: cuDNN comparison, graphs, clipping with
#                                            1, 100, 301 and 3001 arrays, a 3-layer training loop's
#                                            graph replays, a shape past 2^31 gate elements)
#   bash benchmarks/gpu_check.sh all        (everything)
# Logs and JSON land in $OUT (written with tee, so a command killed at its limit still leaves
# what it printed).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
phase=${1:-all}

install() {
  nvidia-smi -L | tee "$OUT/device.txt"
  python3 -m pip install --no-index --find-links build/wheels scikit-build-core scipy-openblas32 -q
  PYLSTM_CUDA=ON python3 -m pip install --no-build-isolation --no-deps . -q 2>&1 | tee "$OUT/install.txt"
  (cd / && python3 -c "import pylstm; print(pylstm.available_backends(), pylstm.cuda_status())") \
    | tee -a "$OUT/device.txt"
}

run_tests() {
  python3 -m pytest -q -x tests 2>&1 | tee "$OUT/pytest.txt" | tail -30
}

sanitize() {
  for tool in memcheck racecheck; do
    compute-sanitizer --tool "$tool" --error-exitcode 9 python3 -m pytest -q -x -k "cuda" \
      tests/test_cuda_backend.py tests/test_lstm_kernels.py tests/test_clip.py 2>&1 \
      | tee "$OUT/sanitizer-$tool.txt" | tail -15
  done
}

bench() {
  python3 benchmarks/bench_cuda.py --review --json "$OUT/bench_cuda.json" 2>&1 | tee "$OUT/bench_cuda.txt"
}

case "$phase" in
  install) install ;;
  test) run_tests ;;
  sanitize) sanitize ;;
  bench) bench ;;
  all) install && run_tests; sanitize; bench ;;
  *) echo "usage: $0 install|test|sanitize|bench|all" >&2; exit 2 ;;
esac
