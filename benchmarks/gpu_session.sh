#!/usr/bin/env bash
# One command for a session with a GPU (the `device` tool: no internet there, python3 holds
# torch, CuPy, pybind11, nvidia-cublas, pytest, cmake, ninja, but not scikit-build-core or
# scipy-openblas32). Prepare here first, then carry build/wheels:
#   pip download --no-deps --python-version 3.12 --only-binary=:all: -d build/wheels \
#       scikit-build-core scipy-openblas32 pathspec
# and run on the device:  bash benchmarks/gpu_session.sh   (carry: ["build/wheels"])
# It installs pylstm with its CUDA module, runs the whole test suite (the `cuda` tests included),
# compute-sanitizer memcheck and racecheck over the CUDA kernel tests, and the GPU benchmark;
# logs and JSON land in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi -L | tee "$OUT/device.txt"
python3 -m pip install --no-index --find-links build/wheels scikit-build-core scipy-openblas32 -q
PYLSTM_CUDA=ON python3 -m pip install --no-build-isolation --no-deps . -q 2>&1 | tail -20
(cd / && python3 -c "import pylstm; print(pylstm.available_backends(), pylstm.cuda_status())") | tee -a "$OUT/device.txt"
python3 -m pytest -q -x tests 2>&1 | tail -30 | tee "$OUT/pytest.txt"
for tool in memcheck racecheck; do
  compute-sanitizer --tool "$tool" --error-exitcode 9 python3 -m pytest -q -x -k "cuda" \
    tests/test_cuda_backend.py tests/test_lstm_kernels.py tests/test_clip.py 2>&1 | tail -15 \
    | tee "$OUT/sanitizer-$tool.txt"
done
python3 benchmarks/bench_cuda.py --json "$OUT/bench_cuda.json" 2>&1 | tee "$OUT/bench_cuda.txt"
