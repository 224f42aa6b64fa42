"""What the derivative rules cost relative to the solve itself (issue 2, item 10).

Times, interleaved inside one process (medians of repeated rounds, after compilation):
  primal           jit(lstsq(a, b).x)
  value_and_grad   jit(value_and_grad(sum(x**2)) w.r.t. (a, b)): first order, O(M N K) tangent
  hvp              jit(jvp(grad(...))): one Hessian-vector product, second order through the
                   factor-pair rule, O(M N min(M, N))
and the same for jnp.linalg.lstsq. Prints each system's ratios to its own primal, and jaxlsq's
primal and value_and_grad times as ratios to jnp's (only two systems, so more rounds fit in the
time than in python3 -m benchmarks: a cross-check of its ratios).

Run: python3 -m benchmarks.derivative_cost [--rounds 15] [--shapes 2000x200,2000x200x64]
(a shape MxN has one right-hand side, a vector b; MxNxK has K).
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxlsq


def _timed(f, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(f(*args))
    return time.perf_counter() - start


def systems(solver):
    def loss(a, b):
        return jnp.sum(solver(a, b) ** 2)

    grad = jax.grad(loss, argnums=(0, 1))
    return {
        "primal": jax.jit(solver),
        "value_and_grad": jax.jit(jax.value_and_grad(loss, argnums=(0, 1))),
        "hvp": jax.jit(lambda a, b, da, db: jax.jvp(grad, (a, b), (da, db))[1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--shapes", default="2000x200,200x2000,500x500")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    args = parser.parse_args()
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    print(
        f"jax {jax.__version__}, {platform.processor() or platform.machine()}, "
        f"{jax.devices()[0].platform}, {args.dtype}, medians of {args.rounds} rounds"
    )
    solvers = {
        "jaxlsq": lambda a, b: jaxlsq.lstsq(a, b).x,
        "jnp": lambda a, b: jnp.linalg.lstsq(a, b)[0],
    }
    print(
        "| shape | system | primal ms | value_and_grad / primal | hvp / primal "
        "| primal / jnp's | value_and_grad / jnp's |"
    )
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for shape in args.shapes.split(","):
        m, n, *k = map(int, shape.split("x"))
        b_shape = (m, *k)
        a, b = (jnp.asarray(rng.standard_normal(s), args.dtype) for s in ((m, n), b_shape))
        da, db = (jnp.asarray(rng.standard_normal(s), args.dtype) for s in ((m, n), b_shape))
        calls = {}
        for name, solver in solvers.items():
            fs = systems(solver)
            calls[name, "primal"] = (fs["primal"], (a, b))
            calls[name, "value_and_grad"] = (fs["value_and_grad"], (a, b))
            calls[name, "hvp"] = (fs["hvp"], (a, b, da, db))
        for f, call_args in calls.values():  # compile and warm up
            _timed(f, *call_args)
        times = {key: [] for key in calls}
        for _ in range(args.rounds):
            for key, (f, call_args) in calls.items():
                times[key].append(_timed(f, *call_args))
        med = {key: float(np.median(t)) for key, t in times.items()}
        for name in solvers:
            p = med[name, "primal"]
            vs_jnp = [med[name, kind] / med["jnp", kind] for kind in ("primal", "value_and_grad")]
            print(
                f"| {shape} | {name} | {1e3 * p:.1f} | {med[name, 'value_and_grad'] / p:.2f} | "
                f"{med[name, 'hvp'] / p:.2f} | {vs_jnp[0]:.2f} | {vs_jnp[1]:.2f} |"
            )


if __name__ == "__main__":
    main()
