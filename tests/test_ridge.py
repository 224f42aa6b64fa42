"""Ridge regression: jaxlsq.lstsq(a, b, l2_regularizer=lam), its values and derivatives.

References: the SVD filter factors s / (s^2 + lam) in NumPy float64 (values); the normal
equations (A^H A + lam I)^{-1} A^H b, or A^H (A A^H + lam I)^{-1} b, differentiated by JAX in
float64 (smooth for lam > 0 and exact where the rank is exact); finite differences along the
battery's rank-preserving curves.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import CASES, assert_close, low_rank, problem, randn, rtol
from jax.test_util import check_grads

import jaxlsq

HIGHEST = jax.lax.Precision.HIGHEST


def filter_reference(a, b, lam, rcond=None):
    """x = V diag(s / (s^2 + lam)) U^H b over the values NumPy's cutoff keeps, float64."""
    u, s, vh = np.linalg.svd(a, full_matrices=False)
    rcond = np.finfo(a.dtype).eps * max(a.shape) if rcond is None else rcond
    keep = s > rcond * s[0]
    f = np.where(keep, s / np.where(keep, s**2 + lam, 1), 0)
    return vh.conj().T @ (f[:, None] * (u.conj().T @ b))


def normal_equations(a, b, lam):
    """The ridge solution from the normal equations, differentiable by JAX (lam > 0 or full rank)."""
    m, n = a.shape
    ah = jnp.conj(a.T)
    if m >= n:
        gram = jnp.matmul(ah, a, precision=HIGHEST) + lam * jnp.eye(n)
        return jnp.linalg.solve(gram, jnp.matmul(ah, b, precision=HIGHEST))
    gram = jnp.matmul(a, ah, precision=HIGHEST) + lam * jnp.eye(m)
    return jnp.matmul(ah, jnp.linalg.solve(gram, b), precision=HIGHEST)


SHAPES = {
    "tall_qr": (30, 5),  # through the QR reduction
    "wide_qr": (5, 30),
    "near_square": (8, 6),
    "square": (6, 6),
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128, np.complex64])
@pytest.mark.parametrize("rank_deficient", [False, True], ids=["full", "deficient"])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_filter_factors(shape, rank_deficient, dtype):
    rng = np.random.default_rng(3)
    complex_ = np.iscomplexobj(dtype(0))
    m, n = SHAPES[shape]
    a = low_rank(rng, m, n, 3, complex_) if rank_deficient else randn(rng, (m, n), complex_)
    b = randn(rng, (m, 2), complex_)
    a_d, b_d = a.astype(dtype), b.astype(dtype)
    for lam in [0.0, 1e-3, 2.0]:
        cutoff = np.finfo(dtype).eps * max(m, n)  # the data's own dtype sets the cutoff
        x_ref = filter_reference(a_d.astype(np.complex128), b_d.astype(np.complex128), lam, cutoff)
        for f in (jaxlsq.lstsq, jax.jit(jaxlsq.lstsq)):
            x, residuals, rank, s = f(a_d, b_d, l2_regularizer=lam)
            assert x.dtype == dtype
            assert_close(x, x_ref if complex_ else x_ref.real, 50 * rtol(dtype), err_msg=str(lam))
            r = b_d - a_d @ np.asarray(x)
            assert_close(residuals, np.sum(np.abs(r) ** 2, axis=0), 50 * rtol(dtype))
            assert int(rank) == (3 if rank_deficient else min(m, n))
        if not rank_deficient and lam > 0:  # an independent formula
            wide = np.complex128 if complex_ else np.float64
            assert_close(x_ref, normal_equations(a_d.astype(wide), b_d.astype(wide), lam), 1e-10)


@pytest.mark.parametrize("rank_deficient", [False, True], ids=["full", "deficient"])
@pytest.mark.parametrize("shape", SHAPES)
def test_zero_is_the_plain_solution(shape, rank_deficient):
    # The same rank, and x, residuals and singular values to rounding: the plain solve may take
    # another route (a triangular solve at full rank, one QR of [a, b] for tall ones).
    rng = np.random.default_rng(4)
    m, n = SHAPES[shape]
    a = low_rank(rng, m, n, 3) if rank_deficient else randn(rng, (m, n))
    for k in [(), (2,), (9,)]:
        b = randn(rng, (m, *k))
        plain = jax.jit(lambda a, b: jaxlsq.lstsq(a, b))(a, b)
        ridge = jax.jit(lambda a, b, lam: jaxlsq.lstsq(a, b, l2_regularizer=lam))(a, b, 0.0)
        assert int(ridge.rank) == int(plain.rank) == (3 if rank_deficient else min(m, n))
        for got, want in zip(ridge, plain):
            assert_close(got, want, 1e-13, err_msg=str(k))


def test_one_lam_per_problem_and_a_path_from_one_matrix():
    rng = np.random.default_rng(5)
    a = randn(rng, (4, 12, 3))
    b = randn(rng, (4, 12, 1))
    lam = np.array([0.0, 0.1, 1.0, 10.0])
    x = jaxlsq.lstsq(a, b, l2_regularizer=lam).x
    for i in range(4):
        assert_close(x[i], filter_reference(a[i], b[i], lam[i]), 1e-12)
    # under vmap, and with lam traced under jit (one compilation for every value)
    x_vmap = jax.vmap(lambda a, b, lam: jaxlsq.lstsq(a, b, l2_regularizer=lam).x)(a, b, lam)
    assert_close(x_vmap, x, 1e-12)
    traces = []

    @jax.jit
    def fit(lam):
        traces.append(None)
        return jaxlsq.lstsq(a[0], b[0], l2_regularizer=lam).x

    for value in lam:
        assert_close(fit(value), filter_reference(a[0], b[0], value), 1e-12)
    assert len(traces) == 1
    # many lam for one matrix: a regularization path, batch shape (4,)
    path = jaxlsq.lstsq(a[0], b[0], l2_regularizer=lam)
    assert path.x.shape == (4, 3, 1) and path.rank.shape == (4,) and path.residuals.shape == (4, 1)
    for i in range(4):
        assert_close(path.x[i], filter_reference(a[0], b[0], lam[i]), 1e-12)


def test_errors_and_invalid_values_under_jit():
    a, b = np.eye(3), np.ones(3)
    with pytest.raises(ValueError, match=r"jaxlsq.lstsq: l2_regularizer must be finite and >= 0"):
        jaxlsq.lstsq(a, b, l2_regularizer=-1.0)
    with pytest.raises(ValueError, match="finite and >= 0; got nan"):
        jaxlsq.lstsq(a, b, l2_regularizer=np.array([0.0, np.nan]))
    with pytest.raises(TypeError, match="l2_regularizer must be a real number"):
        jaxlsq.lstsq(a, b, l2_regularizer=1j)
    with pytest.raises(ValueError, match=r"l2_regularizer has shape \(2,\), which does not"):
        jaxlsq.lstsq(np.ones((3, 4, 2)), np.ones((3, 4, 1)), l2_regularizer=np.ones(2))
    out = jax.jit(lambda lam: jaxlsq.lstsq(a, b, l2_regularizer=lam))(jnp.array([1.0, -1.0]))
    assert np.all(np.isfinite(out.x[0])) and np.all(np.isnan(out.x[1]))
    assert np.isnan(out.residuals[1, 0]) and np.all(np.isfinite(out.singular_values))


# --- derivatives ------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 0.5])
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("case", CASES)
def test_first_order_along_rank_preserving_curves(case, complex_, lam):
    a, b, rcond, curve, da, db, weights, model_error, cond = problem(case, complex_)
    dlam = 0.3
    x_of = jax.jit(lambda a, b, lam: jaxlsq.lstsq(a, b, rcond, l2_regularizer=lam)[:2])
    (x, res), (dx, dres) = jax.jvp(x_of, (a, b, lam), (da, db, dlam))
    assert_close(x, filter_reference(a, b, lam, rcond), 1e-10)
    # central differences in t (forward ones at lam = 0, where lam < 0 is outside the domain)
    h = 1e-5
    x_t = lambda t: np.asarray(x_of(curve(t), b + t * db, lam + t * dlam)[0])  # noqa: E731
    if lam > 0:
        fd = (x_t(h) - x_t(-h)) / (2 * h)
    else:
        fd = (-3 * x_t(0.0) + 4 * x_t(h) - x_t(2 * h)) / (2 * h)
    tol = max(1e-6 * cond**2, 10 * model_error)
    assert_close(dx, fd, tol, err_msg="finite differences")
    # reverse mode agrees with forward mode: <grad, direction> = directional derivative
    f = lambda a, b, lam: jnp.sum(jnp.real(weights * x_of(a, b, lam)[0]))  # noqa: E731
    ga, gb, glam = jax.grad(f, argnums=(0, 1, 2))(a, b, lam)
    # JAX's grad of a real function of complex z is the transpose: df = Re(sum(g * dz))
    directional = np.sum(np.real(ga * da)) + np.sum(np.real(gb * db))
    directional += glam * dlam
    assert_close(directional, np.sum(np.real(weights * np.asarray(dx))), 1e-10 * cond**2)
    if lam > 0 and model_error == 0:  # the exact-rank normal equations, differentiated by JAX
        ref = lambda a, b, lam: normal_equations(a, b, lam)  # noqa: E731
        _, dx_ref = jax.jvp(ref, (a, b, lam), (da, db, dlam))
        assert_close(dx, dx_ref, 1e-8 * cond**2, err_msg="normal equations")


def test_dlam_at_zero_is_minus_gram_pinv_x_at_any_rank():
    rng = np.random.default_rng(6)
    for m, n in [(10, 5), (5, 10), (6, 6), (30, 4)]:
        a = low_rank(rng, m, n, 2)
        b = randn(rng, (m,))
        x, dx = jax.jvp(lambda lam: jaxlsq.lstsq(a, b, l2_regularizer=lam).x, (0.0,), (1.0,))
        want = -np.linalg.pinv(a.T @ a, rcond=1e-10) @ np.asarray(x)
        assert_close(dx, want, 1e-9)
        # continuity in lam -> 0: value and derivative
        x_small, dx_small = jax.jvp(
            lambda lam: jaxlsq.lstsq(a, b, l2_regularizer=lam).x, (1e-10,), (1.0,)
        )
        assert_close(x_small, x, 1e-8)
        assert_close(dx_small, dx, 1e-6)


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("shape", SHAPES)
def test_hessian_full_rank_against_normal_equations(shape, complex_):
    rng = np.random.default_rng(7)
    m, n = SHAPES[shape]
    a, b = randn(rng, (m, n), complex_), randn(rng, (m,), complex_)
    w = randn(rng, (n,), complex_)
    lam = 0.7

    def loss(solve):
        def f(ar, ai, b, lam):
            x = solve(ar + 1j * ai if complex_ else ar, b, lam)
            return jnp.sum(jnp.abs(x) ** 2) + jnp.sum(jnp.real(w * x))

        return f

    ours = loss(lambda a, b, lam: jaxlsq.lstsq(a, b, l2_regularizer=lam).x)
    ref = loss(normal_equations)
    args = (a.real, a.imag, b, lam)
    got = jax.jit(jax.hessian(ours, argnums=(0, 1, 3)))(*args)
    want = jax.hessian(ref, argnums=(0, 1, 3))(*args)
    for i, row in enumerate(want):
        for j, block in enumerate(row):
            assert_close(got[i][j], block, 1e-9, err_msg=f"block {i}{j}")


@pytest.mark.parametrize("case", CASES)
def test_second_order_along_rank_preserving_curves(case):
    """d^2/dt^2 x(A(t), b + t db, lam + t dlam): forward over forward and forward over reverse
    against a float64 second difference."""
    a, b, rcond, curve, da, db, weights, model_error, cond = problem(case, False)
    lam, dlam = 0.5, 0.3
    x_t = jax.jit(
        lambda t: jaxlsq.lstsq(curve(t), b + t * db, rcond, l2_regularizer=lam + t * dlam).x
    )
    h = 1e-4
    fd = (np.asarray(x_t(h)) - 2 * np.asarray(x_t(0.0)) + np.asarray(x_t(-h))) / h**2
    tol = max(1e-5 * cond**3, 10 * model_error)
    fwd_fwd = jax.jvp(lambda s: jax.jvp(x_t, (s,), (1.0,))[1], (0.0,), (1.0,))[1]
    assert_close(fwd_fwd, fd, tol, err_msg="forward over forward")
    g_t = lambda t: jnp.sum(jnp.real(weights[:, 0] @ x_t(t)))  # noqa: E731
    fwd_rev = jax.jvp(jax.grad(g_t), (0.0,), (1.0,))[1]
    assert_close(fwd_rev, np.sum(weights[:, 0] @ fd), tol, err_msg="forward over reverse")


def test_check_grads_with_lam():
    rng = np.random.default_rng(8)
    a, b = randn(rng, (7, 4)), randn(rng, (7, 2))

    def f(a, b, lam):
        x, residuals, _, _ = jaxlsq.lstsq(a, b, l2_regularizer=lam)
        return x, residuals

    check_grads(
        jax.jit(f), (a, b, 0.3), order=2, modes=("fwd", "rev"), eps=1e-5, atol=1e-6, rtol=1e-6
    )


def test_invalid_lam_under_jit_gives_nan_gradients():
    a, b = np.eye(3), np.ones(3)
    for lam in [jnp.nan, -1.0]:
        grad = jax.jit(jax.grad(lambda lam: jaxlsq.lstsq(a, b, l2_regularizer=lam).x.sum()))(lam)
        assert np.isnan(grad)
