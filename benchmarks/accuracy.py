"""How accurate is x, against NumPy and against a reference refined in extended precision?

The suite's accuracy column compares with NumPy's float64 answer (LAPACK gelsd). Near the
rounding level that partly measures how alike two algorithms round: SVD-based solvers share
NumPy's rounding pattern. Here the reference is also refined: residuals in np.longdouble
(extended precision on x86), corrections by NumPy, twice. Well-conditioned problems only (the
refinement converges there).

Run: python3 -m benchmarks.accuracy [--batch 1000] [--shape 256x32] [--dtype float64]
"""

from __future__ import annotations

import argparse

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxlsq  # noqa: E402


def refined(
    a: np.ndarray, b: np.ndarray, x: np.ndarray, rcond: float | None = None, steps: int = 2
) -> np.ndarray:
    """x + a^+ (b - a x), twice, with the residual in np.longdouble and the cutoff rcond."""
    wide = np.longdouble
    for _ in range(steps):
        r = (b.astype(wide) - a.astype(wide) @ x.astype(wide)).astype(np.float64)
        x = (x.astype(wide) + np.linalg.lstsq(a, r, rcond=rcond)[0]).astype(np.float64)
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--shape", default="256x32")
    parser.add_argument("--dtype", default="float64")
    args = parser.parse_args()
    m, n = (int(v) for v in args.shape.split("x"))
    rng = np.random.default_rng(0)
    a = rng.standard_normal((args.batch, m, n)).astype(args.dtype)
    b = rng.standard_normal((args.batch, m)).astype(args.dtype)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    rcond = np.finfo(args.dtype).eps * max(m, n)
    numpy_x = np.stack([np.linalg.lstsq(ai, bi, rcond=rcond)[0] for ai, bi in zip(a64, b64)])
    better = np.stack([refined(ai, bi, xi, rcond) for ai, bi, xi in zip(a64, b64, numpy_x)])
    systems = {
        "jaxlsq": jax.jit(jax.vmap(lambda a, b: jaxlsq.lstsq(a, b).x)),
        "jnp.linalg.lstsq": jax.jit(jax.vmap(lambda a, b: jnp.linalg.lstsq(a, b)[0])),
    }

    def error(x, reference):
        return float(
            np.max(np.abs(np.asarray(x, np.float64) - reference)) / np.max(np.abs(reference))
        )

    print(f"{args.batch} x ({m}x{n}) {args.dtype}, jax {jax.__version__}")
    print("| system | max rel. error vs NumPy | vs refined reference |")
    print("|---|---|---|")
    print(f"| numpy.linalg.lstsq | 0 | {error(numpy_x, better):.1e} |")
    for name, solve in systems.items():
        x = solve(jnp.asarray(a), jnp.asarray(b))
        print(f"| {name} | {error(x, numpy_x):.1e} | {error(x, better):.1e} |")


if __name__ == "__main__":
    main()
