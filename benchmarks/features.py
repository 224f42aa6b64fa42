"""Ridge, row weights and a kept factorization: jaxlsq against what a jnp user would write.

Each case times, interleaved inside one process (medians of repeated rounds, after compilation),
jaxlsq's call and the plain-JAX way to get the same answer, primal and jit(value_and_grad) of
sum(x**2) w.r.t. every input, and records each answer's max relative error against NumPy float64:
  ridge       lstsq(a, b, l2_regularizer=lam) [svd and cholesky] vs jnp.linalg.lstsq on the
              stacked problem [a; sqrt(lam) I] x = [b; 0]
  weights     lstsq(a, b, weights=w) vs jnp.linalg.lstsq(sqrt(w) a, sqrt(w) b)
  reuse       one factorize(a) and K solves, one right-hand side at a time (a scan), vs K calls
              of jnp.linalg.lstsq and K calls of jaxlsq.lstsq

Run: python3 -m benchmarks.features [--rounds 9] [--shape 2000x200] [--dtype float64]
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxlsq

LAM = 0.1
K_REUSE = 32


def ridge_cases(a, b, w):
    n = a.shape[1]

    def stacked(a, b, lam):
        tall = jnp.concatenate([a, jnp.sqrt(lam) * jnp.eye(n, dtype=a.dtype)])
        return jnp.linalg.lstsq(tall, jnp.concatenate([b, jnp.zeros(n, b.dtype)]))[0]

    def ours(method):
        return lambda a, b, lam: jaxlsq.lstsq(a, b, l2_regularizer=lam, method=method).x

    args = (a, b, jnp.asarray(LAM, a.dtype))
    return {
        "jaxlsq": ours("svd"),
        "jaxlsq(cholesky)": ours("cholesky"),
        "jnp stacked": stacked,
    }, args


def weight_cases(a, b, w):
    def ours(a, b, w):
        return jaxlsq.lstsq(a, b, weights=w).x

    def scaled(a, b, w):
        root = jnp.sqrt(w)
        return jnp.linalg.lstsq(root[:, None] * a, root * b)[0]

    return {"jaxlsq": ours, "jnp scaled": scaled}, (a, b, w)


def reuse_cases(a, b, w):
    bs = jnp.stack([b * (1 + 0.1 * k) for k in range(K_REUSE)])

    def kept(a, bs):
        f = jaxlsq.factorize(a)
        return jax.lax.scan(lambda c, b: (c, f.solve(b)), 0, bs)[1]

    def each(solve):
        return lambda a, bs: jax.lax.scan(lambda c, b: (c, solve(a, b)), 0, bs)[1]

    return {
        "jaxlsq.factorize": kept,
        "jaxlsq.lstsq each": each(lambda a, b: jaxlsq.lstsq(a, b).x),
        "jnp.linalg.lstsq each": each(lambda a, b: jnp.linalg.lstsq(a, b)[0]),
    }, (a, bs)


def references(a, b, w):
    a64, b64, w64 = (np.asarray(v, np.float64) for v in (a, b, w))
    n = a64.shape[1]
    stacked = np.concatenate([a64, np.sqrt(LAM) * np.eye(n)])
    ridge = np.linalg.lstsq(stacked, np.concatenate([b64, np.zeros(n)]), rcond=None)[0]
    root = np.sqrt(w64)
    weighted = np.linalg.lstsq(root[:, None] * a64, root * b64, rcond=None)[0]
    plain = np.linalg.lstsq(a64, b64, rcond=None)[0]
    reuse = np.stack([plain * (1 + 0.1 * k) for k in range(K_REUSE)])
    return {"ridge": ridge, "weights": weighted, "reuse": reuse}


def interleaved(calls: dict, rounds: int, rng) -> dict:
    for f in calls.values():
        jax.block_until_ready(f())
    times = {key: [] for key in calls}
    keys = list(calls)
    for _ in range(rounds):
        for j in rng.permutation(len(keys)):
            start = time.perf_counter()
            jax.block_until_ready(calls[keys[j]]())
            times[keys[j]].append(time.perf_counter() - start)
    return {key: float(np.median(t)) for key, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--shape", default="2000x200")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    args = parser.parse_args()
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    m, n = map(int, args.shape.split("x"))
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((m, n)), args.dtype)
    b = jnp.asarray(rng.standard_normal(m), args.dtype)
    w = jnp.asarray(rng.uniform(0.5, 2.0, m), args.dtype)
    refs = references(a, b, w)
    print(
        f"jax {jax.__version__}, {platform.processor() or platform.machine()}, "
        f"{jax.devices()[0].platform}, {args.dtype}, {m}x{n}, medians of {args.rounds} rounds"
    )
    print("| case | system | primal ms | ratio | value_and_grad ms | ratio | max rel. error |")
    print("|---|---|---|---|---|---|---|")
    for case, build in [("ridge", ridge_cases), ("weights", weight_cases), ("reuse", reuse_cases)]:
        solvers, inputs = build(a, b, w)
        calls = {}
        for name, solve in solvers.items():
            primal = jax.jit(solve)
            loss = lambda *xs, solve=solve: jnp.sum(solve(*xs) ** 2)  # noqa: E731
            vg = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(inputs)))))
            calls[name, "primal"] = lambda f=primal: f(*inputs)
            calls[name, "value_and_grad"] = lambda f=vg: f(*inputs)
        med = interleaved(calls, args.rounds, rng)
        base = list(solvers)[-1]  # the plain-JAX way comes last
        for name, solve in solvers.items():
            x = np.asarray(jax.jit(solve)(*inputs), np.float64)
            error = np.max(np.abs(x - refs[case])) / np.max(np.abs(refs[case]))
            cells = []
            for mode in ("primal", "value_and_grad"):
                cells += [
                    f"{1e3 * med[name, mode]:.2f}",
                    f"{med[name, mode] / med[base, mode]:.2f}",
                ]
            print(f"| {case} | {name} | {' | '.join(cells)} | {error:.1e} |")
    print(
        f"ratios are to the last system of each case; reuse solves K = {K_REUSE} right-hand sides"
    )


if __name__ == "__main__":
    main()
