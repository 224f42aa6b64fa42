"""Derivatives of jaxlsq.lstsq at every rank, against independent references.

References: jnp.linalg.pinv(a) @ b differentiated in float64 (pinv has its own constant-rank
custom JVP), central finite differences in float64 along rank-preserving curves
A(t) = (B + t dB)(C + t dC), and jax.test_util.check_grads on full-rank inputs.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    CASES,
    assert_close,
    battery,
    compiled,
    count_qrs,
    count_svds,
    loss,
    problem,
    randn,
    reference_solve,
    tolerance,
)
from jax.test_util import check_grads

import jaxlsq

DTYPES = {"float64": (np.float64, np.complex128), "float32": (np.float32, np.complex64)}


def jaxlsq_solve(rcond):
    return lambda a, b: tuple(jaxlsq.lstsq(a, b, rcond)[:2])


def split(f):
    """f(a, b) of complex a, b as a function of their real and imaginary parts (for jacfwd)."""
    return lambda ar, ai, br, bi: f(ar + 1j * ai, br + 1j * bi)


@pytest.mark.parametrize("precision", DTYPES)
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("case", CASES)
def test_first_order(case, complex_, precision):
    a, b, rcond, curve, da, db, weights, model_error, cond = problem(case, complex_)
    dtype = DTYPES[precision][complex_]
    tol = tolerance(dtype, cond, model_error)
    x_of = jax.jit(lambda a, b: jaxlsq.lstsq(a, b, rcond)[:2])
    ref_of = jax.jit(reference_solve(rcond))
    a_d, b_d = a.astype(dtype), b.astype(dtype)
    da_d, db_d = da.astype(dtype), db.astype(dtype)

    # forward mode against the pinv reference (float64)
    (x, res), (dx, dres) = jax.jvp(x_of, (a_d, b_d), (da_d, db_d))
    (x_ref, res_ref), (dx_ref, dres_ref) = jax.jvp(ref_of, (a, b), (da, db))
    assert_close(x, x_ref, tol, err_msg="x")
    assert_close(dx, dx_ref, tol, err_msg="dx")
    assert_close(dres, dres_ref, tol, err_msg="d residuals")

    # reverse mode against the reference
    f = loss(jaxlsq_solve(rcond), weights.astype(dtype))
    grads = jax.jit(jax.grad(f, argnums=(0, 1)))(a_d, b_d)
    grads_ref = jax.grad(loss(reference_solve(rcond), weights), argnums=(0, 1))(a, b)
    assert_close(grads[0], grads_ref[0], tol, err_msg="grad a")
    assert_close(grads[1], grads_ref[1], tol, err_msg="grad b")

    # central finite differences in float64 along a rank-preserving curve
    h = 1e-5
    x_plus = np.asarray(x_of(curve(h), b + h * db)[0])
    x_minus = np.asarray(x_of(curve(-h), b - h * db)[0])
    fd = (x_plus - x_minus) / (2 * h)
    assert_close(dx, fd, max(tol, 1e-7 * cond**2), err_msg="finite differences")


def second_order_setup(case, complex_, dtype):
    a, b, rcond, curve, da, db, weights, model_error, cond = problem(case, complex_)
    f = loss(jaxlsq_solve(rcond), weights.astype(dtype))
    args = (a.real, a.imag, b.real, b.imag) if complex_ else (a, b)
    if complex_:
        f = split(f)
    args_d = tuple(np.asarray(x, dtype=np.finfo(dtype).dtype) for x in args)
    tol = tolerance(dtype, cond, model_error, order=2)
    return f, args_d, tuple(range(len(args))), tol


@functools.cache
def reference_hessian(case, complex_):
    a, b, rcond, curve, da, db, weights, model_error, cond = problem(case, complex_)
    f_ref = loss(reference_solve(rcond), weights)
    args = (a.real, a.imag, b.real, b.imag) if complex_ else (a, b)
    if complex_:
        f_ref = split(f_ref)
    return jax.jit(jax.hessian(f_ref, tuple(range(len(args)))))(*args)


def assert_hessians_close(got, want, tol, name):
    for i, row in enumerate(want):
        for j, block in enumerate(row):
            assert_close(got[i][j], block, tol, err_msg=f"{name} block {i}{j}")


@pytest.mark.parametrize("precision", DTYPES)
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("case", CASES)
def test_hessian_forward_over_reverse(case, complex_, precision):
    f, args, argnums, tol = second_order_setup(case, complex_, DTYPES[precision][complex_])
    got = jax.jit(jax.hessian(f, argnums))(*args)
    assert_hessians_close(got, reference_hessian(case, complex_), tol, "hessian")


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("case", CASES)
def test_reverse_over_reverse_and_forward_over_forward(case, complex_):
    f, args, argnums, tol = second_order_setup(case, complex_, DTYPES["float64"][complex_])
    both = jax.jit(
        lambda *args: (
            jax.jacrev(jax.jacrev(f, argnums), argnums)(*args),
            jax.jacfwd(jax.jacfwd(f, argnums), argnums)(*args),
        )
    )
    rev_rev, fwd_fwd = both(*args)
    want = reference_hessian(case, complex_)
    assert_hessians_close(rev_rev, want, tol, "jacrev(jacrev)")
    assert_hessians_close(fwd_fwd, want, tol, "jacfwd(jacfwd)")


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("case", CASES)
def test_second_order_along_rank_preserving_curves(case, complex_):
    """d^2/dt^2 x(A(t), b + t db) by forward over forward vs a float64 second difference."""
    a, b, rcond, curve, da, db, weights, model_error, cond = problem(case, complex_)
    x_t = jax.jit(lambda t: jaxlsq.lstsq(curve(t), b + t * db, rcond).x)
    second = jax.jit(lambda t: jax.jvp(lambda s: jax.jvp(x_t, (s,), (1.0,))[1], (t,), (1.0,))[1])
    h = 1e-4
    fd = (np.asarray(x_t(h)) - 2 * np.asarray(x_t(0.0)) + np.asarray(x_t(-h))) / h**2
    assert_close(
        second(0.0), fd, max(1e-5 * cond**3, 10 * model_error), err_msg="second difference"
    )


FULL_RANK = {
    "tall": (7, 4),
    "wide": (3, 6),
    "square": (4, 4),
}


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("shape", FULL_RANK)
def test_check_grads_full_rank(shape, complex_):
    rng = np.random.default_rng(11)
    a = randn(rng, FULL_RANK[shape], complex_)
    b = randn(rng, (a.shape[0], 2), complex_)

    def f(a, b):
        x, residuals, _, s = jaxlsq.lstsq(a, b)
        return x, residuals, s

    # eps is the finite-difference step: central differences err by eps^2 times the third derivative
    check_grads(jax.jit(f), (a, b), order=2, modes=("fwd", "rev"), eps=1e-5, atol=1e-6, rtol=1e-6)


def test_singular_values_where_values_repeat_or_vanish():
    """Repeated values have only directional derivatives; ds_i = Re(u_i^H dA v_i) is finite there and
    exact for every symmetric function of a repeated group (its sum, sum of squares), checked
    against central differences. A zero value has a kink (|t|): its rule value is finite."""
    rng = np.random.default_rng(12)
    a = battery(rng)["repeated_singular_values"][0]
    a = np.concatenate([a, a[:, :1]], axis=1)  # values (4.01, 3, 3, 0.53, 0.5, 0)
    s = np.linalg.svd(a, compute_uv=False)
    assert abs(s[1] - s[2]) < 1e-12 and s[5] < 1e-12 and np.all(np.diff(s)[[0, 2, 3]] < -1e-2)
    da = randn(rng, a.shape)
    h = 1e-6

    def fd(g):
        plus = np.linalg.svd(a + h * da, compute_uv=False)
        minus = np.linalg.svd(a - h * da, compute_uv=False)
        return (g(plus) - g(minus)) / (2 * h)

    _, ds = jax.jvp(lambda a: jaxlsq.lstsq(a, np.ones(8)).singular_values, (a,), (da,))
    assert np.all(np.isfinite(ds))
    for g in (
        lambda s: jnp.sum(s[1:3]),  # the repeated pair
        lambda s: jnp.sum(s[1:3] ** 2),
        lambda s: s[0] + 2 * s[3] - s[4],  # distinct values, one by one
        lambda s: jnp.sum(s**2),  # the zero value included: s^2 is smooth
    ):
        _, d = jax.jvp(lambda a: g(jaxlsq.lstsq(a, np.ones(8)).singular_values), (a,), (da,))
        np.testing.assert_allclose(d, fd(g), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("shape", [(9, 4), (4, 9), (5, 5)], ids=["tall", "wide", "square"])
def test_second_derivatives_of_singular_values(shape, complex_):
    """The Hessian of a function of the values (distinct and nonzero, where they have one)
    against jnp.linalg.svd's, in the real and imaginary parts of a complex a. Tall and wide
    matrices reach the values through a QR; the second derivative comes from jaxlsq's own rule
    for the vectors (_svd_solve.dense_svd) at every shape."""
    rng = np.random.default_rng(21)
    a = randn(rng, shape, complex_)
    weights = rng.standard_normal(min(shape))
    assert np.min(-np.diff(np.linalg.svd(a, compute_uv=False))) > 0.1

    def of_values(values):
        def f(re, im):
            s = values(re + 1j * im if complex_ else re)
            return jnp.sum(weights * s**2) + jnp.sum(jnp.sin(s))

        return f

    ours = of_values(lambda a: jaxlsq.lstsq(a, jnp.ones(a.shape[0], a.dtype)).singular_values)
    by_jnp = of_values(lambda a: jnp.linalg.svd(a, compute_uv=False))
    args, argnums = (a.real, a.imag), (0, 1) if complex_ else 0
    got = jax.jit(jax.hessian(ours, argnums))(*args)
    want = jax.hessian(by_jnp, argnums)(*args)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert_close(g, w, 1e-11)


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize(
    "shape, rank", [((9, 4), 2), ((4, 9), 3), ((5, 5), 2)], ids=["tall", "wide", "square"]
)
def test_second_derivatives_of_smooth_functions_of_values_at_deficient_rank(shape, rank, complex_):
    """At a rank-deficient a (zero values at rounding level, repeated ones where the rank is 2),
    a function of the values' squares is a polynomial in a's entries:
    sum(s^2) + sum(s^4) / 3 + sum(s^6) / 100 = tr(G) + tr(G^2) / 3 + tr(G^3) / 100 with
    G = a^H a. Its Hessian through jaxlsq's values must equal the polynomial's, which
    involves no SVD. (A function with a kink at a zero value, sum(s) say, has no Hessian there.)"""
    rng = np.random.default_rng(22)
    m, n = shape
    a = randn(rng, (m, rank), complex_) @ randn(rng, (rank, n), complex_)
    s = np.linalg.svd(a, compute_uv=False)
    assert s[rank - 1] > 0.1 and np.all(s[rank:] < 1e-14 * s[0])
    ours = np.asarray(jaxlsq.lstsq(a, np.ones(m)).singular_values)
    assert len(np.unique(ours)) == len(ours)  # no exact ties, where the rule gives NaN

    def at(re, im):
        return re + 1j * im if complex_ else re

    def of_values(re, im):
        s = jaxlsq.lstsq(at(re, im), jnp.ones(m, a.dtype)).singular_values
        return jnp.sum(s**2) + jnp.sum(s**4) / 3 + jnp.sum(s**6) / 100

    def polynomial(re, im):
        a = at(re, im)
        g = jnp.conj(a).T @ a
        g2 = g @ g
        return jnp.real(jnp.trace(g) + jnp.trace(g2) / 3 + jnp.trace(g2 @ g) / 100)

    args, argnums = (a.real, a.imag), (0, 1) if complex_ else 0
    got = jax.jit(jax.hessian(of_values, argnums))(*args)
    want = jax.hessian(polynomial, argnums)(*args)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert_close(g, w, 1e-12)


def test_gradients_under_vmap_match_one_by_one():
    rng = np.random.default_rng(13)
    mats = battery(rng)
    a = np.stack(
        [mats["duplicated_column"][0], mats["zero_column"][0][:, [0, 1, 2, 0]], np.eye(8)[:, :4]]
    )
    b = randn(rng, (3, 8, 2))
    f = lambda a, b: jnp.sum(jaxlsq.lstsq(a, b).x ** 2)  # noqa: E731
    batched = jax.jit(jax.vmap(jax.grad(f, argnums=(0, 1))))(a, b)
    hess = jax.jit(jax.vmap(jax.hessian(f)))(a, b)
    ref = reference_solve(None)
    g = lambda a, b: jnp.sum(ref(a, b)[0] ** 2)  # noqa: E731
    for i in range(3):
        want = jax.grad(g, argnums=(0, 1))(a[i], b[i])
        assert_close(batched[0][i], want[0], 1e-10)
        assert_close(batched[1][i], want[1], 1e-10)
        assert_close(hess[i], jax.hessian(g)(a[i], b[i]), 1e-9)


def test_jnp_lstsq_fails_where_jaxlsq_does_not():
    """The motivating bug, kept visible: jnp.linalg.lstsq's gradient at the identity is NaN."""
    b = np.arange(1.0, 5.0)
    f_jnp = lambda a: jnp.sum(jnp.linalg.lstsq(a, b)[0] ** 2)  # noqa: E731
    f_ours = lambda a: jnp.sum(jaxlsq.lstsq(a, b).x ** 2)  # noqa: E731
    assert not np.all(np.isfinite(jax.grad(f_jnp)(np.eye(4))))
    np.testing.assert_allclose(jax.grad(f_ours)(np.eye(4)), -2 * np.outer(b, b), atol=1e-12)


# --- cost: one factorization, first-order work O(M N K) -------------------------------------


def flops(f, *args) -> float:
    cost = compiled(f, *args).cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX returns one dict per device
        cost = cost[0]
    return float(cost["flops"])


def value_and_grad_of_x(a, b):
    return jax.value_and_grad(lambda a, b: jnp.sum(jaxlsq.lstsq(a, b).x ** 2), argnums=(0, 1))(a, b)


@pytest.mark.parametrize("shape", [(60, 12), (12, 60), (20, 20)])
def test_value_and_grad_runs_one_svd(shape):
    """One QR and one SVD with vectors in every compiled program of x, square input included.
    A single matrix also has one SVD of the values alone (the full-rank shortcut's rank
    decision); its SVD with vectors sits in the branch for lower rank. Differentiating the
    singular values too adds their rule's factorization (an SVD, after a QR for tall and wide
    input, after the solve's: see jaxlsq/_order.py), and a second values-only SVD in the branch
    where the bound settles the rank (one of the two runs)."""
    rng = np.random.default_rng(14)
    a, b = randn(rng, shape), randn(rng, (shape[0],))

    def every_output(a, b):
        x, residuals, _, s = jaxlsq.lstsq(a, b)
        return jnp.sum(x) + jnp.sum(residuals) + jnp.sum(s)

    full = jax.value_and_grad(every_output, argnums=(0, 1))
    hessian = lambda a, b: jax.hessian(lambda a: jnp.sum(jaxlsq.lstsq(a, b).x ** 2))(a)  # noqa: E731
    for f in (lambda a, b: jaxlsq.lstsq(a, b).x, value_and_grad_of_x, hessian):
        assert count_svds(f, a, b) == 1
        assert count_svds(f, a, b, values_only=True) == 1
        assert count_qrs(f, a, b) == 1
    assert count_svds(full, a, b) == 2
    assert count_svds(full, a, b, values_only=True) == 2
    assert count_qrs(full, a, b) == 1 + int(shape[0] != shape[1])


def test_gradient_work_is_linear_in_n_for_one_rhs():
    """XLA's flop count (the SVD custom call excluded) of jit(value_and_grad) doubles with N.

    An O(M N min(M, N)) tangent (a formed pseudo-inverse, dense factor derivatives) would
    quadruple it.
    """
    rng = np.random.default_rng(15)
    m = 800
    counts = [flops(value_and_grad_of_x, randn(rng, (m, n)), randn(rng, (m,))) for n in (40, 80)]
    assert counts[1] / counts[0] < 2.6, counts


def test_vmap_over_columns_of_b_is_one_svd_and_matches():
    rng = np.random.default_rng(16)
    a, b = randn(rng, (9, 4)), randn(rng, (9, 5))
    a[:, 3] = a[:, 0]
    by_column = lambda a, b: jax.vmap(lambda bk: jaxlsq.lstsq(a, bk).x, in_axes=1, out_axes=1)(b)  # noqa: E731
    np.testing.assert_allclose(
        jax.jit(by_column)(a, b), jaxlsq.lstsq(a, b).x, rtol=1e-12, atol=1e-12
    )
    assert count_svds(by_column, a, b) == 1
    grad_cols = lambda a, b: jax.grad(lambda a: jnp.sum(by_column(a, b) ** 2))(a)  # noqa: E731
    assert count_svds(grad_cols, a, b) == 1
    np.testing.assert_allclose(
        jax.jit(grad_cols)(a, b),
        jax.grad(lambda a: jnp.sum(jaxlsq.lstsq(a, b).x ** 2))(a),
        rtol=1e-10,
        atol=1e-12,
    )


NON_FINITE_OPTIONS = {
    "svd": {},
    "ridge": {"l2_regularizer": 0.1},
    "weights": {"weights": np.linspace(0.5, 2.0, 12)},
    "qr": {"method": "qr"},
    "cholesky": {"method": "cholesky"},
}


@pytest.mark.parametrize("options", NON_FINITE_OPTIONS)
@pytest.mark.parametrize("shape", [(12, 3), (12, 12), (12, 40)], ids=["tall", "square", "wide"])
def test_non_finite_input_gives_nan_derivatives(shape, options):
    """A NaN answer has NaN derivatives, never a finite gradient (a masked input once gave 0);
    the other columns' b-derivatives and the batch's other problems keep theirs."""
    kwargs = NON_FINITE_OPTIONS[options]
    rng = np.random.default_rng(4)
    a, b = randn(rng, shape), randn(rng, (shape[0], 2))
    da, db = randn(rng, a.shape), randn(rng, b.shape)

    def loss(a, b):
        result = jaxlsq.lstsq(a, b, **kwargs)
        return jnp.sum(result.x**2) + jnp.sum(result.residuals)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    tangent = jax.jit(
        lambda a, b: jax.jvp(lambda a, b: jaxlsq.lstsq(a, b, **kwargs).x, (a, b), (da, db))[1]
    )
    a_bad, b_bad = a.copy(), b.copy()
    a_bad[2, 1] = np.inf
    b_bad[4, 1] = np.nan
    good_a, good_b = grad(a, b)
    ga, gb = grad(a_bad, b)
    assert np.all(np.isnan(ga)) and np.all(np.isnan(gb))
    assert np.all(np.isnan(tangent(a_bad, b)))
    ga, gb = grad(a, b_bad)
    assert np.all(np.isnan(ga)) and np.all(np.isnan(gb[:, 1]))
    # the columns of b are separate problems: column 0 keeps the gradient and tangent it has
    np.testing.assert_allclose(gb[:, 0], good_b[:, 0], rtol=1e-9, atol=1e-12)
    dx = tangent(a, b_bad)
    assert np.all(np.isnan(dx[:, 1]))
    np.testing.assert_allclose(dx[:, 0], tangent(a, b)[:, 0], rtol=1e-9, atol=1e-12)
    if options != "weights":  # its weights are one vector for one matrix
        batch_a, batch_b = grad(np.stack([a, a_bad]), np.stack([b, b]))
        np.testing.assert_allclose(batch_a[0], good_a, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(batch_b[0], good_b, rtol=1e-9, atol=1e-12)
        assert np.all(np.isnan(batch_a[1])) and np.all(np.isnan(batch_b[1]))
