"""The first call's time in a new process, with and without JAX's persistent compilation cache.

Each measurement runs in a fresh Python process (nothing compiled yet) and times jit(solve)'s
first call, which traces, lowers and compiles, then its second. "no cache" processes run with
no cache directory; "cache" processes share a new temporary directory that the first of them
fills (its time is not counted) and the later ones read, with the minimum compile time set to
0 (JAX's default of 1 s would leave out a single solve). No timing is asserted anywhere.

Run: python3 -m benchmarks.first_call [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

import numpy as np

CHILD = r"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
if sys.argv[1]:
    jax.config.update("jax_compilation_cache_dir", sys.argv[1])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
import jaxlsq
shape = tuple(json.loads(sys.argv[2]))
rng = np.random.default_rng(0)
a = jnp.asarray(rng.standard_normal(shape), jnp.float32)
b = jnp.asarray(rng.standard_normal(shape[:-1] + (1,)), jnp.float32)
f = jax.jit(lambda a, b: jaxlsq.lstsq(a, b).x)
times = []
for _ in range(2):
    start = time.perf_counter()
    jax.block_until_ready(f(a, b))
    times.append(time.perf_counter() - start)
print(json.dumps(times))
"""

SHAPES = {"200x50": (200, 50), "10000 x (64x8)": (10000, 64, 8)}


def in_new_process(script: str, *args: str):
    """Runs script in a fresh Python process with args (its sys.argv[1:]); the JSON value it
    prints on its last line."""
    out = subprocess.run(
        [sys.executable, "-c", script, *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def first_calls(cache: str, shape: tuple[int, ...]) -> list[float]:
    return in_new_process(CHILD, cache, json.dumps(shape))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print("float32, jaxlsq.lstsq(a, b).x under jit; medians over processes, seconds")
    print("| case | no cache: first call | second call | cache: first call | second call |")
    print("|---|---|---|---|---|")
    for label, shape in SHAPES.items():
        with tempfile.TemporaryDirectory() as cache:
            first_calls(cache, shape)  # fills the cache
            cold, warm = [], []
            for _ in range(args.runs):  # interleaved
                cold.append(first_calls("", shape))
                warm.append(first_calls(cache, shape))
        cells = [f"{t:.3f}" for t in (*np.median(cold, axis=0), *np.median(warm, axis=0))]
        print(f"| {label} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
