"""jaxlsq.sharded_lstsq: one tall problem with its rows over a mesh (TSQR), against lstsq.

conftest.py gives 8 simulated CPU devices; meshes of 1, 2 and 8 of them.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, collective_sizes, count_qrs, count_svds, low_rank, randn
from jax.sharding import Mesh

import jaxlsq


def mesh_of(devices: int) -> Mesh:
    if len(jax.devices()) < devices:
        pytest.skip(f"needs {devices} devices")
    return Mesh(np.array(jax.devices()[:devices]), ("rows",))


CASES = {
    "full": lambda rng, m, n, c: randn(rng, (m, n), c),
    "rank_deficient": lambda rng, m, n, c: low_rank(rng, m, n, 3, c),
}


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("devices", [1, 2, 8])
def test_matches_the_single_device_solve(devices, case, complex_):
    mesh = mesh_of(devices)
    rng = np.random.default_rng(devices)
    # 16 rows over 8 devices: fewer rows per device than columns; 8 x 10: fewer rows than columns
    for m, n in [(96, 6), (16, 6), (8, 10)]:
        a = CASES[case](rng, m, n, complex_)
        b = randn(rng, (m, 2), complex_)
        got = jaxlsq.sharded_lstsq(a, b, mesh=mesh, axis_name="rows")
        want = jaxlsq.lstsq(a, b)
        assert_close(got.x, np.linalg.lstsq(a, b, rcond=None)[0], 1e-12)
        assert_close(got.x, want.x, 1e-12)
        assert_close(got.residuals, want.residuals, 1e-12)
        assert_close(got.singular_values, want.singular_values, 1e-12)
        assert int(got.rank) == int(want.rank) == (3 if case == "rank_deficient" else min(m, n))
        vector = jaxlsq.sharded_lstsq(a, b[:, 0], mesh=mesh, axis_name="rows", rcond=1e-8)
        assert_close(vector.x, jaxlsq.lstsq(a, b[:, 0], rcond=1e-8).x, 1e-12)


@pytest.mark.parametrize("devices", [2, 8])
def test_only_the_small_factors_cross_devices(devices):
    mesh = mesh_of(devices)
    rng = np.random.default_rng(0)
    m, n, k = 4096, 8, 3
    a, b = randn(rng, (m, n)), randn(rng, (m, k))

    def solve(a, b):
        return jaxlsq.sharded_lstsq(a, b, mesh=mesh, axis_name="rows")

    def grads(a, b):
        loss = lambda a, b: jnp.sum(solve(a, b).x ** 2) + jnp.sum(solve(a, b).residuals)  # noqa: E731
        return jax.grad(loss, argnums=(0, 1))(a, b)

    bound = devices * (n * n + n * k)  # O(P N^2 + P N K) numbers
    for f in (solve, grads):
        sizes = collective_sizes(f, a, b)
        assert any(kind == "all-gather" for kind, _ in sizes), sizes  # the detector sees them
        assert all(size <= bound for _, size in sizes), (sizes, bound)
        assert sum(size for _, size in sizes) < m  # never the rows


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("case", CASES)
def test_derivatives_match_the_single_device_rule(case, complex_):
    mesh = mesh_of(8)
    rng = np.random.default_rng(1)
    m, n = 64, 5
    left, right = randn(rng, (m, 3), complex_), randn(rng, (3, n), complex_)
    if case == "rank_deficient":  # a and a rank-preserving direction
        a = left @ right
        da = randn(rng, (m, 3), complex_) @ right + left @ randn(rng, (3, n), complex_)
    else:
        a, da = randn(rng, (m, n), complex_), randn(rng, (m, n), complex_)
    b, db = randn(rng, (m, 2), complex_), randn(rng, (m, 2), complex_)

    def sharded(a, b):
        out = jaxlsq.sharded_lstsq(a, b, mesh=mesh, axis_name="rows")
        return out.x, out.residuals, out.singular_values

    def single(a, b):
        out = jaxlsq.lstsq(a, b)
        return out.x, out.residuals, out.singular_values

    for got, want in zip(jax.jvp(sharded, (a, b), (da, db)), jax.jvp(single, (a, b), (da, db))):
        for g, w in zip(got, want):
            assert_close(g, w, 1e-11)
    weights = randn(rng, (n, 2), complex_)
    # the values' weights: on the kept ones only where a is rank deficient (at a dropped value
    # sharded_lstsq's gradient is 0, lstsq's JAX's SVD rule's u_i v_i^H: neither is a derivative)
    kept = np.arange(1.0, n + 1) * (np.arange(n) < (3 if case == "rank_deficient" else n))

    def loss(solve):
        def f(a, b):
            x, residuals, s = solve(a, b)
            return jnp.sum(jnp.real(weights * x)) + jnp.sum(residuals) + jnp.sum(kept * s)

        return f

    got = jax.jit(jax.grad(loss(sharded), argnums=(0, 1)))(a, b)
    want = jax.grad(loss(single), argnums=(0, 1))(a, b)
    for g, w in zip(got, want):
        assert_close(g, w, 1e-11)


def test_errors_and_non_finite():
    mesh = mesh_of(8)
    with pytest.raises(ValueError, match="jaxlsq.sharded_lstsq: a has 12 rows, which do not split"):
        jaxlsq.sharded_lstsq(np.ones((12, 2)), np.ones(12), mesh=mesh, axis_name="rows")
    with pytest.raises(ValueError, match=r"one of \('rows',\); got 'cols'"):
        jaxlsq.sharded_lstsq(np.ones((16, 2)), np.ones(16), mesh=mesh, axis_name="cols")
    with pytest.raises(ValueError, match=r"axis_name must be the name \(a string\)"):
        jaxlsq.sharded_lstsq(np.ones((16, 2)), np.ones(16), mesh=mesh, axis_name=("rows",))
    with pytest.raises(TypeError, match="jaxlsq.sharded_lstsq: mesh must be a jax.sharding.Mesh"):
        jaxlsq.sharded_lstsq(np.ones((16, 2)), np.ones(16), mesh=jax.devices(), axis_name="rows")
    with pytest.raises(ValueError, match=r"a must be one matrix \(M, N\); got shape \(2, 16, 2\)"):
        jaxlsq.sharded_lstsq(np.ones((2, 16, 2)), np.ones((2, 16, 1)), mesh=mesh, axis_name="rows")
    with pytest.raises(ValueError, match=r"b must be a vector \(M,\) or a matrix \(M, K\)"):
        jaxlsq.sharded_lstsq(np.ones((16, 2)), np.ones((2, 16, 1)), mesh=mesh, axis_name="rows")
    # fewer dimensions: the message names the shapes sharded_lstsq takes, not lstsq's stacks
    with pytest.raises(ValueError, match=r"a must have shape \(M, N\); got shape \(16,\)") as e:
        jaxlsq.sharded_lstsq(np.ones(16), np.ones(16), mesh=mesh, axis_name="rows")
    assert "stack" not in str(e.value) and "call jaxlsq.lstsq" in str(e.value)
    with pytest.raises(ValueError, match=r"b must have shape \(M,\) or \(M, K\); got a scalar"):
        jaxlsq.sharded_lstsq(np.ones((16, 2)), 1.0, mesh=mesh, axis_name="rows")
    with pytest.raises(ValueError, match="jaxlsq.sharded_lstsq: rcond must be finite"):
        jaxlsq.sharded_lstsq(
            np.ones((16, 2)), np.ones(16), mesh=mesh, axis_name="rows", rcond=np.nan
        )
    a = np.random.default_rng(2).standard_normal((16, 3))
    a[5, 1] = np.nan
    out = jaxlsq.sharded_lstsq(a, np.ones(16), mesh=mesh, axis_name="rows")
    assert np.all(np.isnan(out.x)) and np.isnan(out.residuals[0]) and int(out.rank) == 0
    # a NaN answer has NaN derivatives (a select would give a zero gradient)
    loss = lambda a, b: jnp.sum(  # noqa: E731
        jaxlsq.sharded_lstsq(a, b, mesh=mesh, axis_name="rows").x ** 2
    )
    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(a, np.ones(16))
    assert all(np.all(np.isnan(g)) for g in grads)


def test_empty_problems_vmap_and_a_traced_non_finite_rcond():
    mesh = mesh_of(8)
    rng = np.random.default_rng(4)
    for shape in ((16, 0), (0, 3)):  # nothing to split: lstsq's empty answer
        out = jaxlsq.sharded_lstsq(np.ones(shape), np.ones(shape[0]), mesh=mesh, axis_name="rows")
        want = jaxlsq.lstsq(np.ones(shape), np.ones(shape[0]))
        for g, w in zip(out, want):
            np.testing.assert_array_equal(g, w)
    # no right-hand sides: x (N, 0), with a's rank and singular values, as NumPy
    a0 = rng.standard_normal((16, 3))
    out = jaxlsq.sharded_lstsq(a0, np.zeros((16, 0)), mesh=mesh, axis_name="rows")
    _, _, rank, s = np.linalg.lstsq(a0, np.zeros((16, 0)), rcond=None)
    assert out.x.shape == (3, 0) and out.residuals.shape == (0,) and int(out.rank) == rank
    assert_close(out.singular_values, s, 1e-12)
    # vmap maps over problems: the mapped axis stays whole, each problem's rows are split
    a, b = rng.standard_normal((2, 16, 3)), rng.standard_normal((2, 16))
    got = jax.vmap(lambda a, b: jaxlsq.sharded_lstsq(a, b, mesh=mesh, axis_name="rows"))(a, b)
    want = jaxlsq.lstsq(a, b[..., None])
    assert_close(got.x, want.x[..., 0], 1e-12)
    np.testing.assert_array_equal(got.rank, want.rank)
    # a NaN rcond under jit cannot raise: every answer is NaN, never a finite one
    solve = jax.jit(
        lambda r: jaxlsq.sharded_lstsq(a[0], b[0], mesh=mesh, axis_name="rows", rcond=r)
    )
    out = solve(jnp.nan)
    assert np.all(np.isnan(out.x)) and np.isnan(out.residuals[0]) and int(out.rank) == 0
    assert_close(solve(0.0).x, want.x[0, :, 0], 1e-12)


@pytest.mark.parametrize("devices", [1, 8])
def test_one_factorization_of_the_rows(devices):
    # x and the singular values come from one factorization of the scaled blocks: from the
    # unscaled ones too it took two QRs and two SVDs (and jax 0.6.0 two SVDs from two gathers)
    mesh = mesh_of(devices)
    rng = np.random.default_rng(1)
    a, b = randn(rng, (1024, 8)), randn(rng, (1024, 3))

    def solve(a, b):
        return jaxlsq.sharded_lstsq(a, b, mesh=mesh, axis_name="rows")

    def value_and_grad(a, b):
        loss = lambda a, b: jnp.sum(solve(a, b).x ** 2)  # noqa: E731
        return jax.value_and_grad(loss, argnums=(0, 1))(a, b)

    for f in (solve, value_and_grad):
        assert count_qrs(f, a, b) == 1
        assert count_svds(f, a, b) + count_svds(f, a, b, values_only=True) == 1


@pytest.mark.parametrize(
    "dtype, scale",
    [(np.float32, 1e-35), (np.float32, 3e37), (np.float64, 1e-300), (np.float64, 1e300)],
    ids=["f32-tiny", "f32-huge", "f64-tiny", "f64-huge"],
)
def test_values_at_the_ends_of_the_range(dtype, scale):
    # The singular values came from the unscaled blocks: float32 ones at 3e37 were 9% off,
    # at 1e-35 4e-5 (x was right). b at 1, or at the scale where a is huge: x stays normal
    mesh = mesh_of(8)
    rng = np.random.default_rng(3)
    a = (rng.standard_normal((32, 4)) * scale).astype(dtype)
    b = (rng.standard_normal((32, 2)) * max(scale, 1.0)).astype(dtype)
    out = jaxlsq.sharded_lstsq(a, b, mesh=mesh, axis_name="rows")
    # NumPy float64 on the same numbers brought to scale 1 (the residuals' squares leave the range)
    a64, b64 = a.astype(np.float64) / scale, b.astype(np.float64) / max(scale, 1.0)
    x, _, rank, s = np.linalg.lstsq(a64, b64, rcond=None)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out.singular_values, s * scale, rtol=tol)
    np.testing.assert_allclose(out.x, x * max(scale, 1.0) / scale, rtol=tol)
    assert int(out.rank) == rank == 4


@pytest.mark.parametrize(
    "dtype, scale",
    [(np.float64, 1e-160), (np.float64, 1e160), (np.float32, 1e-22), (np.float32, 1e22)],
    ids=["f64-tiny", "f64-huge", "f32-tiny", "f32-huge"],
)
def test_derivatives_at_scales_beyond_the_square_root_of_the_range(dtype, scale):
    # The rule's 1/s^2 over- or underflows there (it gave NaN for a tiny a, 0 for a huge one,
    # where the derivative is an ordinary number). Reference: the pinv derivative in NumPy
    # float64 on the rounded inputs brought back to scale 1, then divided by the scale
    mesh = mesh_of(8)
    rng = np.random.default_rng(7)
    a1, da1 = rng.standard_normal((2, 16, 3))
    b = rng.standard_normal((16, 2)).astype(dtype)
    a, da = (a1 * scale).astype(dtype), (da1 * scale).astype(dtype)
    a64, da64 = a.astype(np.float64) / scale, da.astype(np.float64) / scale
    p = np.linalg.pinv(a64)
    resid = b.astype(np.float64) - a64 @ (p @ b)
    want = (-p @ da64 @ p @ b + p @ p.T @ da64.T @ resid) / scale  # full column rank
    solve = lambda a, b: jaxlsq.sharded_lstsq(a, b, mesh=mesh, axis_name="rows").x  # noqa: E731
    x, dx = jax.jvp(lambda a: solve(a, b), (a,), (da,))
    tol = 1e-3 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(x, p @ b.astype(np.float64) / scale, rtol=tol)
    np.testing.assert_allclose(dx, want, rtol=tol)
    sharded = partial(jaxlsq.sharded_lstsq, mesh=mesh, axis_name="rows")
    out, d_out = jax.jvp(lambda a: sharded(a, b), (a,), (da,))
    u, s, vh = np.linalg.svd(a64, full_matrices=False)
    np.testing.assert_allclose(out.singular_values, s * scale, rtol=tol)
    np.testing.assert_allclose(out.residuals, np.sum(resid**2, axis=0), rtol=tol)
    assert int(out.rank) == 3
    # the values' derivative diag(U^T dA V), at scale 1 in float64, times the scale
    ds = np.einsum("mi,mn,in->i", u, da64, vh) * scale
    np.testing.assert_allclose(d_out.singular_values, ds, rtol=tol)
    # reverse mode, with a cotangent of scale so that the gradient is an ordinary number too
    ct = np.full((3, 2), scale, dtype)
    got = jax.vjp(solve, a, b)[1](ct)
    ref = jax.vjp(lambda a, b: jaxlsq.lstsq(a, b).x, a, b)[1](ct)
    for g, g_ref in zip(got, ref, strict=True):
        assert np.all(np.isfinite(g_ref)) and np.max(np.abs(g_ref)) > 0
        np.testing.assert_allclose(g, g_ref, rtol=tol, atol=tol * np.max(np.abs(g_ref)))
