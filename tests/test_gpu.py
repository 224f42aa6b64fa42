"""jaxlsq on a GPU: answers against NumPy in float64, derivatives against the float64 pinv
reference on the CPU. Skipped where JAX has no GPU, as in CI: conftest keeps the suite on the CPU
unless JAX_PLATFORMS is set, so on a GPU machine run

    JAX_PLATFORMS=cuda,cpu python3 -m pytest tests/test_gpu.py

GPUs take other routes than the CPU: cuSOLVER's QR and SVD (Jacobi for small batches), no
chunks, and float32 products that JAX's default precision would round through TF32.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, low_rank, randn, with_singular_values
from test_derivatives import CASES, loss, problem, reference_solve, tolerance

import jaxlsq


def _first(platform: str):
    try:
        return jax.devices(platform)[0]
    except RuntimeError:  # no such backend in this process
        return None


GPU = _first("gpu")
CPU = _first("cpu")
pytestmark = pytest.mark.skipif(
    GPU is None, reason="no GPU (on a GPU machine: JAX_PLATFORMS=cuda,cpu)"
)


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
    """NumPy's answer in float64 per problem: x, rank, singular values."""
    if a.ndim > 2:
        out = [_numpy(ai, bi, rcond) for ai, bi in zip(a, b)]
        return tuple(np.stack(part) for part in zip(*out))
    x, _, rank, s = np.linalg.lstsq(a, b, rcond=rcond)
    return x, rank, s


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", MATRICES)
def test_solves_on_the_gpu_match_numpy(name, dtype):
    a, b = MATRICES[name](np.random.default_rng(list(MATRICES).index(name)))
    rcond = np.finfo(dtype).eps * max(a.shape[-2:])
    a_gpu, b_gpu = jax.device_put(a.astype(dtype), GPU), jax.device_put(b.astype(dtype), GPU)
    out = jax.jit(jaxlsq.lstsq)(a_gpu, b_gpu)
    assert out.x.devices() == {GPU} and out.x.dtype == dtype
    x_ref, rank_ref, s_ref = _numpy(a, b, rcond)
    np.testing.assert_array_equal(np.asarray(out.rank), rank_ref)
    s_max = np.max(s_ref, axis=-1, keepdims=True)
    s_err = np.abs(np.asarray(out.singular_values, dtype=np.float64) - s_ref) / np.maximum(s_max, 1)
    assert np.max(s_err) <= 10 * np.finfo(dtype).eps * max(a.shape[-2:]), float(np.max(s_err))
    # per problem, relative to its own x, within 100 eps cond^2 (the kept values' condition
    # number, at most 20 here); TF32 products would err by about 1e-3
    kept = np.where(np.arange(s_ref.shape[-1]) < rank_ref[..., None], s_ref, np.inf)
    cond = np.max(s_max[..., 0] / np.maximum(np.min(kept, axis=-1), 1e-300), initial=1.0)
    core = tuple(range(a.ndim - 2, x_ref.ndim))
    scale = np.maximum(np.max(np.abs(x_ref), axis=core, keepdims=True), 1e-300)
    err = np.max(np.abs(np.asarray(out.x, dtype=np.float64) - x_ref) / scale)
    assert err <= 100 * np.finfo(dtype).eps * cond**2, (name, err, cond)


@pytest.mark.parametrize("precision", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_derivatives_on_the_gpu(case, precision):
    """Forward and reverse mode on the GPU against the float64 pinv reference on the CPU, for
    the derivative battery (identity, orthonormal, zero and repeated columns, deficient ranks)."""
    a, b, rcond, _, da, db, weights, model_error, cond = problem(case, False)
    tol = tolerance(precision, cond, model_error)

    def on(device, *arrays, dtype=np.float64):
        return [jax.device_put(x.astype(dtype), device) for x in arrays]

    solve = jax.jit(lambda a, b: jaxlsq.lstsq(a, b, rcond)[:2])
    primals, tangents = on(GPU, a, b, dtype=precision), on(GPU, da, db, dtype=precision)
    (x, _), (dx, dres) = jax.jvp(solve, primals, tangents)
    ref = jax.jit(reference_solve(rcond))
    (x_ref, _), (dx_ref, dres_ref) = jax.jvp(ref, on(CPU, a, b), on(CPU, da, db))
    assert dx.devices() == {GPU}
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
