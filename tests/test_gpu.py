"""jaxlsq on a GPU: answers against NumPy in float64, derivatives against the float64 pinv
reference on the CPU. Skipped where JAX has no GPU (or no CPU beside it), as in CI: conftest
keeps the suite on the CPU unless JAX_PLATFORMS is set, so on a GPU machine run

    JAX_PLATFORMS=cuda,cpu python3 -m pytest tests/test_gpu.py

GPUs take other routes than the CPU: cuSOLVER's QR and SVD (Jacobi for small batches), no
chunks, and float32 products that JAX's default precision would round through TF32.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    CASES,
    assert_close,
    loss,
    low_rank,
    problem,
    randn,
    reference_solve,
    tolerance,
    with_singular_values,
)

import jaxlsq


def _first(platform: str):
    try:
        return jax.devices(platform)[0]
    except RuntimeError:  # no such backend in this process
        return None


GPU = _first("gpu")
CPU = _first("cpu")
pytestmark = pytest.mark.skipif(
    GPU is None or CPU is None,
    reason="no GPU, or no CPU for the references (on a GPU machine: JAX_PLATFORMS=cuda,cpu)",
)
COMPLEX = {np.float32: np.complex64, np.float64: np.complex128}


def _duplicated_column(rng, m, n):
    a = randn(rng, (m, n))
    a[:, -1] = a[:, 0]
    return a


def _batch(rng, count, m, n, every):
    """count problems, every every-th with a repeated column (rank n - 1)."""
    a = randn(rng, (count, m, n))
    a[::every, :, -1] = a[::every, :, 0]
    return a


MATRICES = {
    "tall": lambda rng: (randn(rng, (200, 50)), randn(rng, 200)),
    "wide": lambda rng: (randn(rng, (50, 200)), randn(rng, 50)),
    "square": lambda rng: (
        with_singular_values(rng, 60, 60, np.geomspace(1, 0.1, 60)),
        randn(rng, 60),
    ),
    "tall, K=3": lambda rng: (randn(rng, (100, 20)), randn(rng, (100, 3))),
    "tall, repeated column": lambda rng: (_duplicated_column(rng, 120, 30), randn(rng, 120)),
    "wide, rank 5": lambda rng: (low_rank(rng, 20, 90, 5), randn(rng, 20)),
    "zero": lambda rng: (np.zeros((30, 10)), randn(rng, 30)),
    "tall, complex": lambda rng: (randn(rng, (150, 40), True), randn(rng, 150, True)),
    "wide, rank 5, complex": lambda rng: (low_rank(rng, 20, 90, 5, True), randn(rng, 20, True)),
    # at least 1,024 problems of order <= 8: the unrolled triangular solves, some SVDs
    "batch 2048 x 64x8, some rank-deficient": lambda rng: (
        _batch(rng, 2048, 64, 8, every=128),
        randn(rng, (2048, 64, 1)),
    ),
    "batch 64 x 40x12, some rank-deficient": lambda rng: (
        _batch(rng, 64, 40, 12, every=8),
        randn(rng, (64, 40, 1)),
    ),
}


def _numpy(a, b, rcond):
    """NumPy's answer in float64 per problem: x, residuals (NaN, or empty for one problem,
    where NumPy gives none: rank < N or M <= N), rank, singular values."""
    if a.ndim > 2:
        out = [_numpy(ai, bi, rcond) for ai, bi in zip(a, b)]
        out = [(x, r if r.size else np.full(b.shape[-1], np.nan), *rest) for x, r, *rest in out]
        return tuple(np.stack(part) for part in zip(*out))
    return np.linalg.lstsq(a, b, rcond=rcond)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", MATRICES)
def test_solves_on_the_gpu_match_numpy(name, dtype):
    a, b = MATRICES[name](np.random.default_rng(list(MATRICES).index(name)))
    dtype = COMPLEX[dtype] if np.iscomplexobj(a) else dtype
    a, b = a.astype(dtype), b.astype(dtype)  # the reference takes these same numbers
    eps = np.finfo(dtype).eps
    rcond = eps * max(a.shape[-2:])
    out = jax.jit(jaxlsq.lstsq)(jax.device_put(a, GPU), jax.device_put(b, GPU))
    assert out.x.devices() == {GPU} and out.x.dtype == dtype
    wide = np.complex128 if np.iscomplexobj(a) else np.float64
    x_ref, res_ref, rank_ref, s_ref = _numpy(a.astype(wide), b.astype(wide), rcond)
    np.testing.assert_array_equal(np.asarray(out.rank), rank_ref)
    s_max = np.max(s_ref, axis=-1)
    s_err = np.abs(np.asarray(out.singular_values, np.float64) - s_ref)
    assert np.all(s_err <= 10 * eps * max(a.shape[-2:]) * s_max[..., None]), np.max(s_err)

    # Per problem, the perturbation bound of least squares with the kept values' condition
    # number k and rho = ||r|| / (s_max ||x||): |dx| / |x| <= c eps (k + k^2 rho), c = 100. On
    # the CPU (GPU set to it) the errors reach 6.1 eps (k + k^2 rho) (float32: 1.2); TF32
    # products, where x goes through them (ranks below N, batches), err by about 1e-3.
    kept = np.where(np.arange(s_ref.shape[-1]) < rank_ref[..., None], s_ref, np.inf)
    k = s_max / np.maximum(np.min(kept, axis=-1), 1e-300)
    core = tuple(range(a.ndim - 2, x_ref.ndim))
    x_norm = np.sqrt(np.sum(np.abs(x_ref) ** 2, axis=core))
    r_norm = np.sqrt(np.sum(np.abs(b - np.matmul(a.astype(wide), x_ref)) ** 2, axis=core))
    rho = r_norm / np.maximum(s_max * x_norm, 1e-300)
    err = np.sqrt(np.sum(np.abs(np.asarray(out.x, wide) - x_ref) ** 2, axis=core))
    bound = 100 * eps * (k + k**2 * rho) * x_norm
    assert np.all(err <= bound), (name, np.max(err / np.maximum(x_norm, 1e-300)))

    # NumPy's residuals (full-rank tall problems): within 20 eps k ||r|| ||b|| (on the CPU: up to
    # 2.0 eps k ||r|| ||b||; TF32 products, 4e-6 to 2e-5 relative, miss it on some problems)
    given = ~np.isnan(res_ref)
    if np.any(given):
        b_norm = np.sqrt(np.sum(np.abs(b.astype(wide)) ** 2, axis=core))
        res_err = np.abs(np.asarray(out.residuals, np.float64) - res_ref)
        limit = 20 * eps * (k * b_norm * r_norm)[..., None]
        assert np.all(res_err[given] <= np.broadcast_to(limit, res_err.shape)[given])


@pytest.mark.parametrize("precision", [np.float32, np.float64])
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("case", CASES)
def test_derivatives_on_the_gpu(case, complex_, precision):
    """Forward and reverse mode on the GPU against the float64 pinv reference on the CPU, for
    the derivative battery (identity, orthonormal, zero and repeated columns, deficient ranks)."""
    a, b, rcond, _, da, db, weights, model_error, cond = problem(case, complex_)
    precision = COMPLEX[precision] if complex_ else precision
    tol = tolerance(precision, cond, model_error)
    wide = np.complex128 if complex_ else np.float64

    def on(device, *arrays, dtype=wide):
        return [jax.device_put(x.astype(dtype), device) for x in arrays]

    solve = jax.jit(lambda a, b: jaxlsq.lstsq(a, b, rcond)[:2])
    primals, tangents = on(GPU, a, b, dtype=precision), on(GPU, da, db, dtype=precision)
    (x, _), (dx, dres) = jax.jvp(solve, primals, tangents)
    ref = jax.jit(reference_solve(rcond))
    (x_ref, _), (dx_ref, dres_ref) = jax.jvp(ref, on(CPU, a, b), on(CPU, da, db))
    assert dx.devices() == {GPU} and dx_ref.devices() == {CPU}
    assert_close(x, x_ref, tol, err_msg="x")
    assert_close(dx, dx_ref, tol, err_msg="dx")
    assert_close(dres, dres_ref, tol, err_msg="d residuals")

    own = loss(lambda a, b: jaxlsq.lstsq(a, b, rcond)[:2], jnp.asarray(weights, precision))
    grad = jax.jit(jax.grad(own, argnums=(0, 1)))
    grad_ref = jax.jit(jax.grad(loss(reference_solve(rcond), weights), argnums=(0, 1)))
    with jax.default_device(GPU):
        ga, gb = grad(*on(GPU, a, b, dtype=precision))
    with jax.default_device(CPU):
        ga_ref, gb_ref = grad_ref(*on(CPU, a, b))
    assert ga.devices() == {GPU} and ga_ref.devices() == {CPU}
    assert_close(ga, ga_ref, tol, err_msg="grad a")
    assert_close(gb, gb_ref, tol, err_msg="grad b")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_gradients_on_the_gpu(dtype):
    """value_and_grad of sum(x**2) over a batch with rank-deficient members (the benchmark's
    derivative), against the float64 pinv reference on the CPU."""
    rng = np.random.default_rng(5)
    a, b = _batch(rng, 2048, 64, 8, every=128), randn(rng, (2048, 64))

    def value(solve):
        return jax.jit(jax.value_and_grad(lambda a, b: jnp.sum(solve(a, b) ** 2), (0, 1)))

    rcond = np.finfo(dtype).eps * 64
    with jax.default_device(GPU):
        v, (ga, gb) = value(jax.vmap(lambda a, b: jaxlsq.lstsq(a, b).x))(
            jax.device_put(a.astype(dtype), GPU), jax.device_put(b.astype(dtype), GPU)
        )
    with jax.default_device(CPU):
        solve_ref = jax.vmap(lambda a, b: reference_solve(rcond)(a, b)[0])
        v_ref, (ga_ref, gb_ref) = value(solve_ref)(a, b)
    cond = max(np.linalg.cond(p) for p in np.delete(a, np.s_[::128], axis=0))
    tol = tolerance(dtype, cond, 0.0)
    assert abs(float(v) - float(v_ref)) <= tol * abs(float(v_ref))
    assert_close(ga, ga_ref, tol, err_msg="grad a")
    assert_close(gb, gb_ref, tol, err_msg="grad b")
