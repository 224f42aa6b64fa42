"""Row weights: jaxlsq.lstsq(a, b, weights=w) minimizes sum_i w_i |a_i x - b_i|^2.

References: NumPy float64 on (sqrt(w) a, sqrt(w) b) with the cutoff; the problem without its
zero-weight rows; the weighted normal equations (A^H W A + lam) x = A^H W b differentiated by JAX
in float64 (smooth in w, zero weights included, wherever A^H W A + lam is invertible).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, low_rank, randn, rtol

import jaxlsq

HIGHEST = jax.lax.Precision.HIGHEST
SHAPES = {"tall_qr": (30, 5), "wide_qr": (5, 30), "near_square": (9, 6)}


def weighted_reference(a, b, w, lam=0.0, rcond=None):
    root = np.sqrt(w)
    aw, bw = root[:, None] * a, root[..., :, None] * b if b.ndim == 2 else root * b
    u, s, vh = np.linalg.svd(aw, full_matrices=False)
    rcond = np.finfo(np.float64).eps * max(a.shape) if rcond is None else rcond
    keep = s > rcond * s[0]
    f = np.where(keep, s / np.where(keep, s**2 + lam, 1), 0)
    ub = u.conj().T @ bw
    return vh.conj().T @ (f[:, None] * ub if ub.ndim == 2 else f * ub), s


def normal_equations(a, b, w, lam=0.0):
    ah = jnp.conj(a.T)
    gram = jnp.matmul(ah, w[:, None] * a, precision=HIGHEST) + lam * jnp.eye(a.shape[1])
    return jnp.linalg.solve(gram, jnp.matmul(ah, w * b, precision=HIGHEST))


def weights_with_zeros(rng, m):
    w = rng.uniform(0.2, 3.0, m)
    w[[0, 3]] = 0.0
    return w


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128, np.complex64])
@pytest.mark.parametrize("lam", [None, 0.5])
@pytest.mark.parametrize("rank_deficient", [False, True], ids=["full", "deficient"])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_numpy_on_the_scaled_problem(shape, rank_deficient, lam, dtype):
    rng = np.random.default_rng(1)
    complex_ = np.iscomplexobj(dtype(0))
    m, n = SHAPES[shape]
    a = low_rank(rng, m, n, 2, complex_) if rank_deficient else randn(rng, (m, n), complex_)
    b = randn(rng, (m, 2), complex_)
    w = weights_with_zeros(rng, m)
    a_d, b_d, w_d = a.astype(dtype), b.astype(dtype), w.astype(np.finfo(dtype).dtype)
    cutoff = np.finfo(dtype).eps * max(m, n)
    wide = np.complex128 if complex_ else np.float64
    x_ref, s_ref = weighted_reference(
        a_d.astype(wide), b_d.astype(wide), w_d.astype(np.float64), lam or 0.0, cutoff
    )
    for f in (jaxlsq.lstsq, jax.jit(jaxlsq.lstsq)):
        x, residuals, rank, s = f(a_d, b_d, weights=w_d, l2_regularizer=lam)
        assert x.dtype == dtype
        assert_close(x, x_ref, 50 * rtol(dtype))
        assert_close(s, s_ref, 50 * rtol(dtype))
        assert int(rank) == np.sum(s_ref > cutoff * s_ref[0])
        r = np.asarray(b_d, wide) - np.asarray(a_d, wide) @ np.asarray(x, wide)
        assert_close(residuals, np.sum(w_d[:, None] * np.abs(r) ** 2, axis=0), 50 * rtol(dtype))


def test_zero_weights_drop_rows_exactly():
    rng = np.random.default_rng(2)
    a, b = randn(rng, (12, 4)), randn(rng, (12,))
    w = np.ones(12)
    w[[1, 5, 6]] = 0
    kept = w > 0
    got = jaxlsq.lstsq(a, b, weights=w)
    want = jaxlsq.lstsq(a[kept], b[kept])
    assert_close(got.x, want.x, 1e-13)
    assert_close(got.singular_values, want.singular_values, 1e-13)
    assert int(got.rank) == int(want.rank)
    assert_close(got.residuals, want.residuals, 1e-13)
    # a zero weight drops a row whatever it holds (finite values)
    a_big = a.copy()
    a_big[1] = 1e30
    assert_close(jaxlsq.lstsq(a_big, b, weights=w).x, want.x, 1e-13)


def test_batches_vmap_and_broadcasting():
    rng = np.random.default_rng(3)
    a, b = randn(rng, (3, 10, 4)), randn(rng, (3, 10, 1))
    w = rng.uniform(0.1, 2.0, (3, 10))
    x = jaxlsq.lstsq(a, b, weights=w).x
    for i in range(3):
        assert_close(x[i], weighted_reference(a[i], b[i], w[i])[0], 1e-12)
    x_vmap = jax.vmap(lambda a, b, w: jaxlsq.lstsq(a, b, weights=w).x)(a, b, w)
    assert_close(x_vmap, x, 1e-12)
    # one matrix, several weightings: the batch comes from the weights
    several = jaxlsq.lstsq(a[0], b[0], weights=w)
    assert several.x.shape == (3, 4, 1) and several.rank.shape == (3,)
    for i in range(3):
        assert_close(several.x[i], weighted_reference(a[0], b[0], w[i])[0], 1e-12)


def test_errors_and_invalid_weights_under_jit():
    a, b = np.eye(3), np.ones(3)
    with pytest.raises(ValueError, match=r"jaxlsq.lstsq: weights must be finite and >= 0; got -1"):
        jaxlsq.lstsq(a, b, weights=np.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="weights must be finite and >= 0; got inf"):
        jaxlsq.lstsq(a, b, weights=np.array([1.0, np.inf, 1.0]))
    with pytest.raises(ValueError, match=r"weights must have shape \(..., M\) = \(..., 3\)"):
        jaxlsq.lstsq(a, b, weights=np.ones(4))
    with pytest.raises(TypeError, match="weights must be a real number or a real array"):
        jaxlsq.lstsq(a, b, weights=np.ones(3) * 1j)
    with pytest.raises(ValueError, match=r"weights has shape \(2, 3\), whose batch part"):
        jaxlsq.lstsq(np.ones((4, 3, 3)), np.ones((4, 3, 1)), weights=np.ones((2, 3)))
    w = jnp.array([[1.0, 1.0, 1.0], [1.0, -1.0, 1.0], [1.0, jnp.nan, 1.0]])
    out = jax.jit(jax.vmap(lambda w: jaxlsq.lstsq(a, b, weights=w)))(w)
    assert np.all(np.isfinite(out.x[0])) and np.all(np.isnan(out.x[1:]))
    assert np.all(np.isnan(out.residuals[1:])) and np.all(np.isnan(out.singular_values[1:]))
    assert list(out.rank) == [3, 0, 0]


@pytest.mark.parametrize("lam", [0.0, 0.5])
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_first_order_against_weighted_normal_equations(complex_, lam):
    """Full column rank after dropping the zero-weight rows: x is smooth in (a, b, w, lam)."""
    rng = np.random.default_rng(4)
    a, b = randn(rng, (12, 4), complex_), randn(rng, (12,), complex_)
    w = weights_with_zeros(rng, 12)
    da, db = randn(rng, a.shape, complex_), randn(rng, b.shape, complex_)
    dw, dlam = rng.standard_normal(12), 0.4

    def ours(a, b, w, lam):
        return jaxlsq.lstsq(a, b, weights=w, l2_regularizer=lam).x

    x, dx = jax.jvp(ours, (a, b, w, lam), (da, db, dw, dlam))
    x_ref, dx_ref = jax.jvp(normal_equations, (a, b, w, lam), (da, db, dw, dlam))
    assert_close(x, x_ref, 1e-10)
    assert_close(dx, dx_ref, 1e-9)
    # reverse mode agrees with forward mode (JAX's complex grad: df = Re(sum(g * dz)))
    weights_x = randn(rng, (4,), complex_)
    f = lambda *args: jnp.sum(jnp.real(weights_x * ours(*args)))  # noqa: E731
    ga, gb, gw, glam = jax.grad(f, argnums=(0, 1, 2, 3))(a, b, w, lam)
    directional = np.sum(np.real(ga * da)) + np.sum(np.real(gb * db)) + gw @ dw + glam * dlam
    assert_close(directional, np.sum(np.real(weights_x * np.asarray(dx))), 1e-9)


def test_first_order_at_any_rank_along_rank_preserving_directions():
    """Rank-deficient a with zero weights: forward differences along a curve that keeps the rank
    of a, with w + t dw (t >= 0 keeps the weights >= 0)."""
    rng = np.random.default_rng(5)
    left, right = randn(rng, (10, 2)), randn(rng, (2, 5))
    b = randn(rng, (10,))
    w = weights_with_zeros(rng, 10)
    d_left, d_right = randn(rng, (10, 2)), randn(rng, (2, 5))
    dw = rng.uniform(0.1, 1.0, 10)
    curve = lambda t: (left + t * d_left) @ (right + t * d_right)  # noqa: E731 (rank 2 for all t)
    x_of = jax.jit(lambda t: jaxlsq.lstsq(curve(t), b, weights=w + t * dw).x)
    _, dx = jax.jvp(x_of, (0.0,), (1.0,))
    h = 1e-6
    fd = (-3 * np.asarray(x_of(0.0)) + 4 * np.asarray(x_of(h)) - np.asarray(x_of(2 * h))) / (2 * h)
    assert_close(dx, fd, 1e-6)


def test_second_order():
    """Hessians in (a, w) against the normal equations for positive weights; with a zero weight,
    second order in (a, b) stays exact, and second order through w is NaN (documented)."""
    rng = np.random.default_rng(6)
    a, b = randn(rng, (10, 3)), randn(rng, (10,))
    w = rng.uniform(0.3, 2.0, 10)
    ours = lambda w, a: jnp.sum(jaxlsq.lstsq(a, b, weights=w).x ** 2)  # noqa: E731
    ref = lambda w, a: jnp.sum(normal_equations(a, b, w) ** 2)  # noqa: E731
    got = jax.jit(jax.hessian(ours, argnums=(0, 1)))(w, a)
    want = jax.hessian(ref, argnums=(0, 1))(w, a)
    for i in range(2):
        for j in range(2):
            assert_close(got[i][j], want[i][j], 1e-9, err_msg=f"block {i}{j}")
    w[0] = 0.0
    got_a = jax.hessian(lambda a: ours(w, a))(a)
    assert_close(got_a, jax.hessian(lambda a: ref(w, a))(a), 1e-9)
    through_w = jax.hessian(ours, argnums=0)(w, a)
    assert np.all(np.isnan(through_w))


def test_empty_a_weights_the_residuals_and_flags_invalid_options():
    a0, b = jnp.zeros((3, 0)), jnp.array([1.0, 2.0, 3.0])
    w = jnp.array([0.0, 1.0, 2.0])
    assert_close(jaxlsq.lstsq(a0, b, weights=w).residuals, np.array([22.0]), 1e-15)
    grad = jax.grad(lambda w: jaxlsq.lstsq(a0, b, weights=w).residuals.sum())(w)
    assert_close(grad, np.array([1.0, 4.0, 9.0]), 1e-15)
    bad_w = jax.jit(lambda w: jaxlsq.lstsq(a0, b, weights=w))(jnp.array([jnp.nan, 1.0, 2.0]))
    assert np.isnan(bad_w.residuals[0])
    bad_lam = jax.jit(lambda lam: jaxlsq.lstsq(a0, b, l2_regularizer=lam))(-1.0)
    assert np.isnan(bad_lam.residuals[0])
    # with columns but no rows, x = 0 is the answer, and NaN where an option is invalid
    a_rows0, b0 = jnp.zeros((0, 3)), jnp.zeros(0)
    ok = jax.jit(lambda lam: jaxlsq.lstsq(a_rows0, b0, l2_regularizer=lam))(1.0)
    np.testing.assert_array_equal(ok.x, np.zeros(3))
    for lam in (jnp.nan, jnp.inf, -1.0):
        bad = jax.jit(lambda lam: jaxlsq.lstsq(a_rows0, b0, l2_regularizer=lam))(lam)
        assert np.all(np.isnan(bad.x)) and np.isnan(bad.residuals[0])


def test_numpy_resid_needs_concrete_options():
    a, b = np.eye(3), np.ones(3)
    for options in (
        lambda v: {"weights": jnp.ones(3) * v},
        lambda v: {"l2_regularizer": v},
    ):
        with pytest.raises(ValueError, match="numpy_resid=True needs concrete values"):
            jax.vmap(lambda v: jaxlsq.lstsq(a, b, numpy_resid=True, **options(v)).x)(jnp.ones(2))


def test_invalid_weights_under_jit_give_nan_gradients():
    a, b = np.eye(3), np.ones(3)
    grad = jax.jit(jax.grad(lambda w: jaxlsq.lstsq(a, b, weights=w).x.sum()))(
        jnp.array([1.0, jnp.nan, 1.0])
    )
    assert np.all(np.isnan(grad))
