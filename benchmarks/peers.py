"""The systems the benchmark compares: jaxlsq, its JAX, NumPy and SciPy peers, lineax, torch.

Each system turns a problem (a, b) into a primal callable and, where the system can
differentiate, a value_and_grad callable of sum(x**2) w.r.t. (a, b). JAX systems are jitted; the
others run on host arrays, looping over batches when they have no batched call.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

import jaxlsq


@dataclass
class System:
    name: str
    make_primal: Callable  # (a, b) -> zero-argument callable returning x
    make_grad: Callable | None = None  # (a, b) -> zero-argument callable, or None
    # The worker threads the system runs on (XLA's with jaxlib's LAPACK, NumPy's and SciPy's
    # own OpenBLAS copies, torch's). Idle workers spin for a while after a call and slow
    # whatever runs next on another pool: the harness times each pool's systems together.
    pool: str = "jax"


def _jax_system(name: str, solve: Callable) -> System:
    """A JAX solver x = solve(a, b) for one problem; batches go through vmap."""

    def batched(a):
        # a new function on every call, so that each make compiles a program of its own (the
        # harness times several: see benchmarks.__main__'s instances)
        def one(a, b):
            return solve(a, b)

        return one if a.ndim == 2 else jax.vmap(one)

    def make_primal(a, b):
        f = jax.jit(batched(a))
        a, b = jnp.asarray(a), jnp.asarray(b)
        return lambda: f(a, b)

    def make_grad(a, b):
        f = batched(a)
        vg = jax.jit(jax.value_and_grad(lambda a, b: jnp.sum(f(a, b) ** 2), argnums=(0, 1)))
        a, b = jnp.asarray(a), jnp.asarray(b)
        return lambda: vg(a, b)

    return System(name, make_primal, make_grad)


def _host_loop(solve: Callable) -> Callable:
    def make_primal(a, b):
        if a.ndim == 2:
            return lambda: solve(a, b)
        return lambda: np.stack([solve(ai, bi) for ai, bi in zip(a, b)])

    return make_primal


def available(methods: bool = True) -> tuple[list[System], list[str]]:
    """The systems that can run here, and a line for each optional peer that cannot.

    methods=False leaves out jaxlsq's full-rank methods ("qr", "cholesky"), whose compilation
    is a quarter of a quick run's time.
    """
    import scipy.linalg

    systems = [_jax_system("jaxlsq", lambda a, b: jaxlsq.lstsq(a, b).x)]
    skipped = []
    if methods:  # the full-rank fast paths (issue 4): same answer where their assumption holds
        systems += [
            _jax_system("jaxlsq(qr)", lambda a, b: jaxlsq.lstsq(a, b, method="qr").x),
            _jax_system("jaxlsq(cholesky)", lambda a, b: jaxlsq.lstsq(a, b, method="cholesky").x),
        ]
    else:
        skipped.append(
            "jaxlsq(qr) and jaxlsq(cholesky): left out (--quick or --no-methods; the full run has them)"
        )
    systems += [
        _jax_system("jnp.linalg.lstsq", lambda a, b: jnp.linalg.lstsq(a, b)[0]),
        System(
            "numpy.linalg.lstsq",
            _host_loop(lambda a, b: np.linalg.lstsq(a, b, rcond=None)[0]),
            pool="numpy",
        ),
        System(
            "scipy.linalg.lstsq(gelsd)",
            _host_loop(
                lambda a, b: scipy.linalg.lstsq(a, b, lapack_driver="gelsd", check_finite=False)[0]
            ),
            pool="scipy",
        ),
    ]
    if importlib.util.find_spec("lineax") is not None:
        try:
            systems.append(_lineax_system())
        except Exception as err:  # an installed lineax that does not fit this JAX
            skipped.append(f"lineax skipped: {type(err).__name__}: {err}")
    else:
        skipped.append("lineax not installed: skipped (pip install lineax)")
    if importlib.util.find_spec("torch") is not None:
        systems.extend(_torch_systems())
    else:
        skipped.append("torch not installed: skipped (pip install torch)")
    return systems, skipped


def _lineax_system() -> System:
    import lineax as lx

    def solve_vector(a, b):
        op = lx.MatrixLinearOperator(a)
        return lx.linear_solve(op, b, solver=lx.SVD(), throw=False).value

    def solve(a, b):  # lineax takes one right-hand side: vmap over the columns of b
        if b.ndim == 1:
            return solve_vector(a, b)
        return jax.vmap(solve_vector, in_axes=(None, 1), out_axes=1)(a, b)

    return _jax_system("lineax(SVD)", solve)


def _torch_systems() -> list[System]:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    drivers = ["gels"] if device == "cuda" else ["gels", "gelsy", "gelsd", "gelss"]

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    systems = []
    for driver in drivers:

        def make_primal(a, b, driver=driver):
            vector = b.ndim == a.ndim - 1
            ta = torch.from_numpy(np.ascontiguousarray(a)).to(device)
            tb = torch.from_numpy(np.ascontiguousarray(b)).to(device)
            tb = tb[..., None] if vector else tb

            def run():
                x = torch.linalg.lstsq(ta, tb, driver=driver).solution
                sync()
                return x[..., 0] if vector else x

            return run

        def make_grad(a, b, driver=driver):
            vector = b.ndim == a.ndim - 1
            ta = torch.from_numpy(np.ascontiguousarray(a)).to(device).requires_grad_()
            tb = torch.from_numpy(np.ascontiguousarray(b)).to(device)
            tb = (tb[..., None] if vector else tb).requires_grad_()

            def run():
                ta.grad = tb.grad = None
                x = torch.linalg.lstsq(ta, tb, driver=driver).solution
                loss = (x**2).sum()
                loss.backward()
                sync()
                return loss, ta.grad, tb.grad

            return run

        # torch differentiates gels (QR) only; its other drivers have no backward
        systems.append(
            System(
                f"torch({driver})",
                make_primal,
                make_grad if driver == "gels" else None,
                pool="torch",
            )
        )
    return systems


def to_host(x) -> np.ndarray:
    """A system's x as a float64/complex128 NumPy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)
