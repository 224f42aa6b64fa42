#!/usr/bin/env bash
# One pass on a GPU machine, in the repository root, with that machine's python3 (JAX with CUDA,
# SciPy, pytest with pytest-xdist; torch and lineax if there): the machine, the GPU tests, the
# benchmark, then the CPU test suite under that machine's JAX with whatever time is left.
# Everything goes to $OUT (the device tool's folder) or benchmarks/gpu-results, at most 7 files;
# each step has its share of DEADLINE_S seconds.
#   COMMIT=<sha> bash benchmarks/gpu.sh
# (DEADLINE_S=540 TESTS_S=150 SVD_S=90 BENCH_S=380 BENCH_ARGS= by default; COMMIT names the tree where
# the machine has no .git)
set -uo pipefail
out=${OUT:-benchmarks/gpu-results}
mkdir -p "$out"
start=$SECONDS
left() { echo $((${DEADLINE_S:-540} - (SECONDS - start))); }
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

{
  echo "commit: ${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo "unknown (set COMMIT=...)")}"
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  timeout 60 python3 -c "import sys, jax, jaxlib, numpy, torch; print(sys.version); print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, jax.devices()); print('numpy', numpy.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nproc
} 2>&1 | tee "$out/machine.txt"

# The GPU tests (they skip without a GPU): four workers share the card.
XLA_PYTHON_CLIENT_MEM_FRACTION=0.1 JAX_PLATFORMS=cuda,cpu timeout "${TESTS_S:-150}" \
  python3 -m pytest -q -n 4 tests/test_gpu.py 2>&1 | tee "$out/gpu-tests.log"
echo "gpu tests: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$out/machine.txt"

# What R's singular values cost by each algorithm on this GPU, beside the square solves (jaxlsq's
# float32 1000 x 1000 solve needs them; on CUDA jnp.linalg.svd takes the Jacobi SVD up to 1024).
XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 timeout "${SVD_S:-90}" \
  python3 -m benchmarks.svd_values --sizes 256,1000 --rounds 5 2>&1 | tee "$out/svd-values.md"
echo "svd values: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$out/machine.txt"

# The benchmark: JAX on the GPU, torch on CUDA, NumPy and SciPy on the host's cores. Without the
# qr/cholesky methods and lineax (compile time; lineax's SVD solve times as jnp's on the GPU), a
# shorter settle (no 2-core thread pools to calm down). On an H200 (2026-12-04) cases 1-6 in
# both dtypes took 205 s with lineax, a 10,000-problem batch cell about 100 s (jnp's, lineax's
# and torch's backward calls take 4 s each there; without lineax perhaps 60 s, not measured).
# The batches alone, with a whole run's problems (perhaps 300 s; a cut keeps finished cells):
#   DEADLINE_S=570 BENCH_S=480 BENCH_ARGS="--cases 7,8,9" bash benchmarks/gpu.sh
budget=$(left)
((budget > ${BENCH_S:-380})) && budget=${BENCH_S:-380}
without=()
python3 -c "import lineax" 2>/dev/null && without=(--without "lineax(SVD)")
if ((budget > 10)); then
  # shellcheck disable=SC2086  # BENCH_ARGS: several words
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.5 timeout "$budget" python3 -m benchmarks --no-methods \
    "${without[@]}" --settle 0.05 --rounds 7 --budget 10 ${BENCH_ARGS:-} --out "$out" \
    >"$out/bench.md" 2>"$out/bench.log"
  echo "benchmark: exit $? after $((SECONDS - start)) s" | tee -a "$out/machine.txt"
  tail -n 45 "$out/bench.md"
fi

# The CPU suite under this machine's JAX, as far as the time left allows.
rest=$(left)
if ((rest > 40)); then
  workers=$(($(nproc) - 2))
  ((workers < 1)) && workers=1
  timeout "$rest" python3 -m pytest -q -x -n "$workers" \
    2>&1 | tail -n 30 >"$out/cpu-tests.log"
  echo "cpu tests: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$out/machine.txt"
  tail -n 5 "$out/cpu-tests.log"
fi
