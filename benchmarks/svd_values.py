"""What the singular values of a square triangular factor cost by each SVD algorithm JAX offers on
the default backend, beside the square solves that need them.

In float32 at N = 1000 the bound from R^{-1} cannot settle full rank (BENCHMARKS.md, GPU, target
7), so jaxlsq.lstsq computes R's singular values (no vectors) to decide the rank. On the H200 that
solve took as long as jnp.linalg.lstsq's whole SVD solve (1.02x). jnp.linalg.svd takes cuSOLVER's
Jacobi SVD (gesvdj) up to 1024 x 1024 on CUDA, with or without vectors; this measures whether the
QR algorithm (gesvd, the values alone from a bidiagonal form) or the eigenvalues of R^H R would be
cheaper there, before any change to the solver (none has been measured on a GPU).

Times, interleaved inside one process (medians of --rounds rounds, after compilation):
  default   jnp.linalg.svd(r, compute_uv=False)   (CPU: gesdd; CUDA: gesvdj up to 1024)
  qr        lax.linalg.svd(..., algorithm=QR)    (CPU and CUDA: gesvd, values alone)
  eigh      jnp.linalg.eigvalsh(r^H r)             (the squares of the values, for scale only:
                                                    they lose the small values' relative accuracy)
  jaxlsq    jaxlsq.lstsq(a, b).x on the square a that r came from
  jnp       jnp.linalg.lstsq(a, b)[0]
and each algorithm's largest deviation from the default's values, relative to the largest value.

Run: python3 -m benchmarks.svd_values [--sizes 256,1000] [--dtypes float32,float64] [--rounds 7]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxlsq


def _timed(f, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(f(*args))
    return time.perf_counter() - start


def candidates() -> dict:
    """name -> (function of (r, a, b), whether it returns values to compare)."""
    qr_algorithm = lax.linalg.SvdAlgorithm.QR
    return {
        "default": (lambda r, a, b: jnp.linalg.svd(r, compute_uv=False), True),
        "qr": (
            lambda r, a, b: lax.linalg.svd(
                r, full_matrices=False, compute_uv=False, algorithm=qr_algorithm
            ),
            True,
        ),
        "eigh": (
            lambda r, a, b: jnp.sqrt(jnp.abs(jnp.linalg.eigvalsh(r.conj().T @ r)[::-1])),
            True,
        ),
        "jaxlsq": (lambda r, a, b: jaxlsq.lstsq(a, b).x, False),
        "jnp": (lambda r, a, b: jnp.linalg.lstsq(a, b)[0], False),
    }


def measure(n: int, dtype: str, rounds: int, seed: int = 0) -> dict:
    """Median seconds of each candidate on one random n x n problem, and the values' deviations."""
    rng = np.random.default_rng(seed)
    a = jnp.asarray(rng.standard_normal((n, n)), dtype)
    b = jnp.asarray(rng.standard_normal(n), dtype)
    r = jnp.linalg.qr(a, mode="r")
    functions = {}
    deviation = {}
    values = None
    for name, (f, gives_values) in candidates().items():
        try:
            compiled = jax.jit(f)
            out = jax.block_until_ready(compiled(r, a, b))
        except Exception as error:  # an algorithm this backend does not offer
            print(f"  {name}: skipped ({type(error).__name__}: {str(error).splitlines()[0]})")
            continue
        functions[name] = compiled
        if gives_values:
            out = np.asarray(out, np.float64)
            values = out if values is None else values
            deviation[name] = float(np.max(np.abs(out - values)) / values[0])
    times = {name: [] for name in functions}
    for _ in range(rounds):
        for name, f in functions.items():
            times[name].append(_timed(f, r, a, b))
    return {
        "median_s": {name: float(np.median(t)) for name, t in times.items()},
        "deviation": deviation,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,1000")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    dtypes = args.dtypes.split(",")
    if "float64" in dtypes:
        jax.config.update("jax_enable_x64", True)
    device = jax.devices()[0]
    print(
        f"jax {jax.__version__}, {device.platform} ({device.device_kind}), medians of "
        f"{args.rounds} rounds, ms; deviation: max |s - s_default| / s_max"
    )
    print("| n | dtype | default | qr | eigh | jaxlsq | jnp | deviation qr | deviation eigh |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dtype in dtypes:
        for n in (int(s) for s in args.sizes.split(",")):
            result = measure(n, dtype, args.rounds)
            ms = {k: f"{1e3 * v:.2f}" for k, v in result["median_s"].items()}
            dev = {k: f"{v:.1e}" for k, v in result["deviation"].items()}
            cells = [ms.get(k, "-") for k in ("default", "qr", "eigh", "jaxlsq", "jnp")]
            cells += [dev.get(k, "-") for k in ("qr", "eigh")]
            print(f"| {n} | {dtype} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
