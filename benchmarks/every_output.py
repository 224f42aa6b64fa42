"""The cases of issue 3 called for x alone and for every output, against jnp.linalg.lstsq.

python3 -m benchmarks times the primal call as lstsq(a, b).x for every system, and XLA drops what
x does not need. jnp.linalg.lstsq's singular values come with the SVD its x needs; jaxlsq's x
needs no SVD where its bound settles full rank, so its singular values (an SVD of R without
vectors) and its residuals (b - a x) cost extra when a caller uses them, as a drop-in call that
unpacks (x, residuals, rank, s) does. This times both forms, interleaved inside one process
(medians of --rounds rounds, after compilation; batches through vmap, as python3 -m benchmarks
runs them), and checks that the two systems' ranks agree.

Columns: x alone (jaxlsq / jnp), every output (jaxlsq / jnp), every output in ms for each, and
jaxlsq's every-output time over its x-alone time.

Run: python3 -m benchmarks.every_output [--rounds 15] [--dtypes float32,float64]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxlsq

CASES = [  # (problems, M, N, K); 0 problems: a single solve
    (0, 200, 50, 1),
    (0, 2000, 200, 1),
    (0, 10000, 100, 1),
    (0, 100, 2000, 1),
    (0, 1000, 1000, 1),
    (0, 2000, 200, 64),
    (10000, 64, 8, 1),
    (1000, 256, 32, 1),
]


def calls(batched: bool) -> dict:
    """(system, form) -> jitted function of (a, b)."""
    mapped = jax.vmap if batched else lambda f: f
    return {
        ("jaxlsq", "x"): jax.jit(mapped(lambda a, b: jaxlsq.lstsq(a, b).x)),
        ("jnp", "x"): jax.jit(mapped(lambda a, b: jnp.linalg.lstsq(a, b)[0])),
        ("jaxlsq", "all"): jax.jit(mapped(lambda a, b: tuple(jaxlsq.lstsq(a, b)))),
        ("jnp", "all"): jax.jit(mapped(lambda a, b: tuple(jnp.linalg.lstsq(a, b)))),
    }


def medians(fs: dict, a, b, rounds: int) -> dict:
    times = {key: [] for key in fs}
    for _ in range(rounds):
        for key, f in fs.items():
            start = time.perf_counter()
            jax.block_until_ready(f(a, b))
            times[key].append(time.perf_counter() - start)
    return {key: float(np.median(t)) for key, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--dtypes", default="float32,float64")
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {args.rounds} rounds")
    print(
        "| shape | dtype | x: jaxlsq / jnp | every output: jaxlsq / jnp "
        "| every output, jaxlsq ms | jnp ms | jaxlsq every output / x |"
    )
    print("|---|---|---|---|---|---|---|")
    for problems, m, n, k in CASES:
        batch = (problems,) if problems else ()
        shape = f"{problems} x ({m}x{n})" if problems else f"{m}x{n}, K={k}"
        for dtype in args.dtypes.split(","):
            rng = np.random.default_rng(0)
            a = jnp.asarray(rng.standard_normal((*batch, m, n)).astype(dtype))
            b = jnp.asarray(
                rng.standard_normal((*batch, m) + ((k,) if k > 1 else ())).astype(dtype)
            )
            fs = calls(bool(problems))
            ranks = [np.asarray(fs[system, "all"](a, b)[2]) for system in ("jaxlsq", "jnp")]
            if not np.array_equal(*ranks):
                raise SystemExit(f"{shape} {dtype}: the ranks differ")
            for f in fs.values():  # compiled, and run once
                jax.block_until_ready(f(a, b))
            t = medians(fs, a, b, args.rounds)
            print(
                f"| {shape} | {dtype} | {t['jaxlsq', 'x'] / t['jnp', 'x']:.2f} "
                f"| {t['jaxlsq', 'all'] / t['jnp', 'all']:.2f} "
                f"| {1e3 * t['jaxlsq', 'all']:.2f} | {1e3 * t['jnp', 'all']:.2f} "
                f"| {t['jaxlsq', 'all'] / t['jaxlsq', 'x']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
