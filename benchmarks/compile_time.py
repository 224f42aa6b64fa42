"""How long jaxlsq's programs take to build, beside jnp.linalg.lstsq's, on the benchmark's cases.

A user who calls a solve once in a new shape pays the build before the first answer: tracing
and lowering (Python: jaxlsq's rules, JAX's transformations) and XLA's compilation. For every
case of python3 -m benchmarks (the same problems) and each dtype, this times both steps for
jit(x) and jit(value_and_grad(sum(x**2))) w.r.t. (a, b), each build from a new function with
JAX's caches cleared, interleaved between the two systems in a new order every round, and
prints the medians and jaxlsq's ratio to jnp's. XLA compiles with its default flags here (the
tests use LLVM's level 0 and no fusion emitters: tests/conftest.py). No timing is asserted.

Run: python3 -m benchmarks.compile_time [--rounds 3] [--cases 1,2,...] [--dtypes float32,float64]
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxlsq

from .__main__ import FULL, problem

SOLVERS = {
    "jaxlsq": lambda a, b: jaxlsq.lstsq(a, b).x,
    "jnp": lambda a, b: jnp.linalg.lstsq(a, b)[0],
}


def build(solve, mode: str, a, b) -> tuple[float, float]:
    """Seconds to trace and lower, then to compile, a new program of solve on (a, b)."""
    jax.clear_caches()

    def one(a, b):  # a new function every time: nothing is reused from an earlier build
        return solve(a, b)

    f = one if a.ndim == 2 else jax.vmap(one)
    if mode == "value_and_grad":
        f = jax.value_and_grad(lambda a, b, f=f: jnp.sum(f(a, b) ** 2), argnums=(0, 1))
    start = time.perf_counter()
    lowered = jax.jit(f).lower(a, b)
    traced = time.perf_counter()
    lowered.compile()
    return traced - start, time.perf_counter() - traced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", default=",".join(str(i) for i in range(1, len(FULL) + 1)))
    parser.add_argument("--dtypes", default="float32,float64")
    args = parser.parse_args()
    dtypes = args.dtypes.split(",")
    if "float64" in dtypes:
        jax.config.update("jax_enable_x64", True)
    picked = {int(c) for c in args.cases.split(",")}
    print(
        f"jax {jax.__version__}, jaxlsq {jaxlsq.__version__}, "
        f"{platform.processor() or platform.machine()}, {jax.devices()[0].platform}; "
        f"medians of {args.rounds} builds, seconds"
    )
    print(
        "| case | dtype | mode | jaxlsq trace+lower | jaxlsq compile | jnp trace+lower "
        "| jnp compile | jaxlsq / jnp (total) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)  # the problems of python3 -m benchmarks, case by case
    order = np.random.default_rng(1)
    for number, case in enumerate(FULL, 1):
        for dtype in dtypes:
            a, b = problem(case, np.dtype(dtype), rng)
            if number not in picked:
                continue
            a, b = jnp.asarray(a), jnp.asarray(b)
            for mode in ("primal", "value_and_grad"):
                times = {name: [] for name in SOLVERS}
                for _ in range(args.rounds):
                    for i in order.permutation(len(SOLVERS)):
                        name = list(SOLVERS)[i]
                        times[name].append(build(SOLVERS[name], mode, a, b))
                med = {name: np.median(np.array(t), axis=0) for name, t in times.items()}
                ratio = med["jaxlsq"].sum() / med["jnp"].sum()
                print(
                    f"| {case.label()} | {dtype} | {mode} | {med['jaxlsq'][0]:.2f} | "
                    f"{med['jaxlsq'][1]:.2f} | {med['jnp'][0]:.2f} | {med['jnp'][1]:.2f} | "
                    f"{ratio:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
