"""Matrices whose entries are all tiny or all huge, outside LAPACK's safe range.

Each problem is a well-conditioned float64 one (a0, b0) times powers of two: a = 2^ka a0,
b = 2^kb b0, exact in the tested dtype (entries of a0 and b0 lie in [1/2, 2] in magnitude, so
no scaled entry is subnormal). Then x = 2^(kb - ka) x0, s = 2^ka s0 and the rank is a0's, with
x0 and s0 from NumPy in float64: every route must give them to the dtype's usual tolerance, as
LAPACK's gelsd (which scales) does. ka lies beyond safmin / eps (about 1e-31 in float32, 1e-292
in float64) or its inverse, where an unscaled Householder QR loses digits to flushed subnormal
intermediates or overflows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, pinv_solve, rtol

import jaxlsq
from jaxlsq._scaling import exponent, extent, frobenius, power_of_two

# log2 of the scales, beyond safmin / eps and its inverse (about 2^-103 and 2^103 in float32,
# 2^-970 and 2^970 in float64): tiny (float32 2^-120 ~ 8e-37: an unscaled QR then errs by about
# safmin / max|a| ~ 1e-2) and huge (2^122 ~ 5e36, singular values still below 2^128).
TINY = {np.float32: -120, np.float64: -1015}
HUGE = {np.float32: 122, np.float64: 1018}
SHAPES = [(30, 6), (6, 30), (6, 6), (9, 6), (6, 9)]


def _entries(rng, shape):
    """Random signs times magnitudes in [1/2, 2]: exact and normal after any tested scaling."""
    return rng.choice([-1.0, 1.0], shape) * rng.uniform(0.5, 2.0, shape)


def _problem(seed, shape, k=2):
    rng = np.random.default_rng(seed)
    return _entries(rng, shape), _entries(rng, (shape[0], k))


def _scales(dtype):
    """(ka, kb) pairs whose x = 2^(kb - ka) x0 has no subnormal entries (b tiny with a of order
    one would have them; a tiny with b is covered)."""
    t, h = TINY[dtype], HUGE[dtype]
    return [(t, t), (t, t // 2), (h, h), (h, h // 2), (0, h)]


def _scaled(x, k, dtype):
    return np.ldexp(np.asarray(x, np.float64), k).astype(dtype)


def _ridge(a, b, lam):
    """x = V diag(s / (s^2 + lam)) U^T b in float64 (NumPy's SVD), as 1 / (s + lam / s): no s^2
    to underflow."""
    u, s, vh = np.linalg.svd(a, full_matrices=False)
    return vh.T @ ((1 / (s + lam / s))[:, None] * (u.T @ b))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, jnp.bfloat16])
def test_exponents_and_powers_of_two_from_the_bits(dtype):
    """_scaling.exponent against np.frexp on positive numbers across the whole normal range (every
    exponent, the smallest and largest normal numbers, each side of powers of two), and
    power_of_two against np.ldexp for every exponent of the normal range; eagerly and under jit.
    NumPy works in float64, where every number of these dtypes is exact."""
    info = jnp.finfo(dtype)
    rng = np.random.default_rng(4)
    ks = np.arange(info.minexp, info.maxexp)
    below = 1 - np.ldexp(1.0, -info.nmant - 1)  # the largest number of the dtype below 1
    x = np.concatenate(
        [
            np.ldexp(rng.uniform(0.5, 0.75, ks.size), ks + 1),
            np.ldexp(1.0, ks),  # exactly 2^k: f = 1/2
            np.ldexp(below, ks[1:]),  # just below 2^k
            [float(info.tiny), float(info.max), 1.0, 0.5, 3.0],
        ]
    )
    x = x.astype(dtype)
    assert np.all(np.isfinite(x.astype(np.float64))) and np.all(x.astype(np.float64) >= info.tiny)
    want = np.frexp(x.astype(np.float64))[1]  # exact: every number of the dtype is a float64
    want_powers = np.ldexp(1.0, ks).astype(dtype)
    for e, p in (
        (exponent, power_of_two),
        (jax.jit(exponent), jax.jit(power_of_two, static_argnums=1)),
    ):
        got = np.asarray(e(jnp.asarray(x)))
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, want)
        powers = np.asarray(p(jnp.asarray(ks, jnp.int32), dtype))
        assert powers.dtype == want_powers.dtype
        np.testing.assert_array_equal(powers.astype(np.float64), want_powers.astype(np.float64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
def test_frobenius_norm_over_the_whole_range(dtype):
    """_scaling.frobenius against NumPy (the entries' exact magnitudes, summed in float64 after
    scaling by a power of two) where the largest entry lies anywhere from the normal range's
    bottom to its top: 1 / max |x| is subnormal above 1 / tiny, and a norm that multiplied by it
    came out 0 (the full-rank bound then certified rank-deficient matrices). A norm past the
    largest float is inf, and a matrix with inf or NaN gives inf or NaN."""
    real = np.finfo(dtype).dtype
    info = np.finfo(real)
    rng = np.random.default_rng(3)
    # entries of up to 0.9 in magnitude, the first 0.75, times 2^k: at the top, 0.75 2^(maxexp - 1)
    # lies above 1 / tiny = 2^-minexp (float32: 2^126) and the norm (at most 1.6 2^k) below the
    # largest float
    for k in [info.minexp + 2, -20, 0, 20, info.maxexp - 1]:
        x = _entries(rng, (3, 2, 2)) / 4
        if np.issubdtype(dtype, np.complexfloating):
            x = x + 1j * _entries(rng, x.shape) / 4
        x[:, 0, 0] = 0.75
        x = (x * np.ldexp(1.0, k)).astype(dtype)
        exact = np.linalg.norm(x.astype(np.complex128) * np.ldexp(1.0, -k), axis=(1, 2))
        exact = exact * np.ldexp(1.0, k)
        for f in (frobenius, jax.jit(frobenius)):
            assert_close(f(x), exact, 4 * info.eps, err_msg=f"largest entry 2^{k}")
    top = np.full((1, 2, 2), np.ldexp(1.0, info.maxexp - 1), dtype)  # its norm passes the top
    special = np.array([[[np.inf, 1.0]], [[np.nan, 1.0]], [[0.0, 0.0]]], dtype)
    assert np.asarray(frobenius(top)).tolist() == [np.inf]
    got = np.asarray(jax.jit(frobenius)(special))
    assert got[0] == np.inf and np.isnan(got[1]) and got[2] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64])
@pytest.mark.parametrize("columns", [False, True], ids=["matrices", "columns"])
def test_extent_gives_the_largest_entry_and_finiteness(dtype, columns):
    """_scaling.extent (one reduction for both) against NumPy: the largest magnitude of each
    matrix (or column) of a batch large enough for XLA's parallel reductions, and whether it is
    finite, with NaN and inf placed at the first, a middle and the last entry of some matrices
    (a max that drops NaN would miss some of them: the finiteness may not come from it), and
    at the top of the range (complex: a finite entry whose modulus overflows is finite)."""
    real = np.finfo(dtype).dtype
    rng = np.random.default_rng(5)
    x = _entries(rng, (300, 64, 3)).astype(dtype)
    if np.issubdtype(dtype, np.complexfloating):
        x = x + 1j * _entries(rng, x.shape).astype(real)
    top = np.finfo(real).max
    places = [(0, 0, 0), (1, 31, 1), (2, 63, 2), (3, 5, 2), (299, 63, 2), (150, 17, 0)]
    for (p, i, j), value in zip(places, [np.nan, np.nan, np.nan, np.inf, -np.inf, np.nan]):
        x[p, i, j] = value
    x[4, 10, 1] = top * (1 + 1j if np.issubdtype(dtype, np.complexfloating) else 1)
    axis = -2 if columns else (-2, -1)
    want_finite = np.all(np.isfinite(x), axis=axis)
    want_big = np.max(np.abs(x.astype(np.complex128)), axis=axis)
    for f in (extent, jax.jit(extent, static_argnums=1)):
        big, finite = (np.asarray(y) for y in f(x, columns))
        np.testing.assert_array_equal(finite, want_finite)
        assert big.dtype == real
        ok = want_finite & (want_big <= top)  # complex: |top (1 + i)| overflows to inf
        np.testing.assert_allclose(big[ok], want_big[ok], rtol=4 * np.finfo(real).eps)
    assert not np.all(want_finite) and np.sum(~want_finite) == len(places)
    empty = extent(np.zeros((2, 0, 3), dtype), columns)
    assert np.all(np.asarray(empty[0]) == 0) and np.all(np.asarray(empty[1]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_plain_solve_matches_numpy_at_extreme_scales(dtype, shape, jit):
    a0, b0 = _problem(0, shape)
    x0, _, rank0, s0 = np.linalg.lstsq(a0, b0, rcond=None)
    solve = jax.jit(jaxlsq.lstsq) if jit else jaxlsq.lstsq
    for ka, kb in _scales(dtype):
        a, b = _scaled(a0, ka, dtype), _scaled(b0, kb, dtype)
        out = solve(a, b)
        tag = f"a = 2^{ka} a0, b = 2^{kb} b0"
        assert_close(np.ldexp(np.asarray(out.x, np.float64), ka - kb), x0, rtol(dtype), 0, tag)
        assert_close(np.ldexp(np.asarray(out.singular_values, np.float64), -ka), s0, rtol(dtype))
        assert int(out.rank) == rank0, tag


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_with_each_problem_at_its_own_scale(dtype):
    """One batch, problems tiny, huge and ordinary side by side (the per-problem scale), on the
    batched path of small problems (unrolled triangular solves from 1024 problems)."""
    n_problems, shape = 1030, (12, 3)
    rng = np.random.default_rng(1)
    a0 = _entries(rng, (n_problems, *shape))
    b0 = _entries(rng, (n_problems, shape[0], 1))
    pairs = np.array(_scales(dtype) + [(0, 0)])
    ka, kb = pairs[rng.integers(len(pairs), size=n_problems)].T
    a = np.ldexp(a0, ka[:, None, None]).astype(dtype)
    b = np.ldexp(b0, kb[:, None, None]).astype(dtype)
    x0 = np.stack([np.linalg.lstsq(p, q, rcond=None)[0] for p, q in zip(a0, b0)])
    for out in (jaxlsq.lstsq(a, b), jax.vmap(jaxlsq.lstsq)(a, b)):
        x = np.ldexp(np.asarray(out.x, np.float64), (ka - kb)[:, None, None])
        assert_close(x, x0, rtol(dtype), 0)
        np.testing.assert_array_equal(np.asarray(out.rank), 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(30, 6), (6, 30)])
@pytest.mark.parametrize("route", ["weights", "qr", "cholesky", "factorize", "ridge", "ridge_zero"])
def test_other_routes_match_numpy_at_extreme_scales(dtype, shape, route):
    """Weights and the qr and cholesky methods scale a and b as the plain solve does. factorize
    and l2_regularizer scale a's QR but solve with b as given (README, Known issues): b tiny
    (a tiny with it) is left out for them, and for lam = 1 a tiny a, whose x would underflow."""
    a0, b0 = _problem(2, shape)
    w = np.random.default_rng(3).uniform(0.5, 2.0, shape[0])
    lam = 1.0
    pairs = _scales(dtype)
    t = TINY[dtype]
    if route in ("factorize", "ridge", "ridge_zero"):
        pairs = [(ka, kb) for ka, kb in pairs if kb > t]
    if route == "ridge":
        pairs = [(ka, kb) for ka, kb in pairs if ka >= 0]
    for ka, kb in pairs:
        a, b = _scaled(a0, ka, dtype), _scaled(b0, kb, dtype)
        a64, b64 = np.ldexp(a0, ka), np.ldexp(b0, kb)  # the same problem in float64
        if route == "weights":
            x = jaxlsq.lstsq(a, b, weights=w.astype(dtype)).x
            root = np.sqrt(w)[:, None]
            want = np.linalg.lstsq(root * a64, root * b64, rcond=None)[0]
        elif route in ("qr", "cholesky"):
            x = jaxlsq.lstsq(a, b, method=route).x
            want = np.linalg.lstsq(a64, b64, rcond=None)[0]
        elif route == "factorize":
            f = jaxlsq.factorize(a)
            x = f.solve(b)
            want = np.linalg.lstsq(a64, b64, rcond=None)[0]
            s = np.ldexp(np.asarray(f.singular_values, np.float64), -ka)
            assert_close(s, np.linalg.svd(a0, compute_uv=False), rtol(dtype))
        else:  # ridge: lam = 1 dominates a tiny a and vanishes beside a huge one
            lam_r = lam if route == "ridge" else 0.0
            x = jaxlsq.lstsq(a, b, l2_regularizer=lam_r).x
            want = _ridge(a64, b64, lam_r)
        scale = np.max(np.abs(want))
        assert_close(
            np.asarray(x, np.float64) / scale, want / scale, rtol(dtype), 0, f"{route} {ka} {kb}"
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(30, 6), (6, 30), (6, 6)])
def test_gradients_at_extreme_scales(dtype, shape):
    """grad of sum(c * x) in (a, b), b scaled with a so that x stays of order one: the
    gradients are 2^-k times those of the unscaled problem (jnp.linalg.pinv's rule, float64).
    At the huge end k = 104 (float32) or 975 (float64), beyond eps / safmin but with gradients
    2^-k above the subnormal range."""
    a0, b0 = _problem(4, shape)
    c = np.random.default_rng(5).standard_normal((shape[1], b0.shape[1]))

    def loss(solve):
        return lambda a, b: jnp.sum(c.astype(a.dtype) * solve(a, b))

    want = jax.grad(loss(lambda a, b: pinv_solve(a, b, None)), argnums=(0, 1))(a0, b0)
    grad = jax.jit(jax.grad(loss(lambda a, b: jaxlsq.lstsq(a, b).x), argnums=(0, 1)))
    for k in (TINY[dtype], {np.float32: 104, np.float64: 975}[dtype]):
        got = grad(_scaled(a0, k, dtype), _scaled(b0, k, dtype))
        for g, w, name in zip(got, want, "ab"):
            g = np.ldexp(np.asarray(g, np.float64), k)
            assert_close(g, np.asarray(w), 10 * rtol(dtype), err_msg=f"d/d{name} at 2^{k}")


# Inside LAPACK's range, yet with s^2 beyond the dtype's: 2^63 (float32) and 2^511 (float64)
# entries give singular values whose squares overflow (and at 2^-63, 2^-511 whose inverse squares
# do), where (A^H A)^+ ~ 1/s^2 underflows or overflows. lam = 2^(2 ka) stays normal.
GRAM_EDGE = {np.float32: 63, np.float64: 511}
DERIVATIVE_ROUTES = [("svd", (30, 6)), ("svd", (6, 30)), ("svd", (6, 6))] + [
    (route, shape)
    for route in ("qr", "cholesky", "factorize", "ridge", "weights", "qr_weights")
    for shape in ((30, 6), (6, 30))
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("route, shape", DERIVATIVE_ROUTES)
def test_derivatives_where_the_gram_matrix_leaves_the_range(dtype, route, shape):
    """jvp and grad of x at a = 2^ka a0 and b = 2^kb b0 (ka = +-GRAM_EDGE, kb = ka or 0), where
    neither jaxlsq nor LAPACK scales a: x = 2^(kb - ka) x0, its tangent along (2^ka da0, 2^kb db0,
    dw) 2^(kb - ka) dx0, and the gradients of sum(c x) in a, b and the weights w 2^(kb - 2 ka),
    2^-ka and 2^(kb - ka) times those at a0, b0 (jnp.linalg.pinv's rule, float64; ridge with
    lam = 2^(2 ka) through the normal equations); for svd, ridge and weights also the gradients'
    tangent (second order, kb = ka). The rules applied (A^H A)^+ ~ 1/s^2 to a vector first:
    tangents and gradients were zero or NaN, x exact (found in review). A gradient whose scale
    leaves the normal range is skipped, and so is the w-gradient of a wide a (zero)."""
    a0, b0 = _problem(9, shape)
    rng = np.random.default_rng(10)
    da0, db0 = rng.standard_normal(shape), rng.standard_normal(b0.shape)
    c = rng.standard_normal((shape[1], b0.shape[1]))
    w0, dw0 = rng.uniform(0.5, 2.0, shape[0]), rng.standard_normal(shape[0])
    weighted = route in ("weights", "qr_weights")
    tall_weighted = weighted and shape[0] > shape[1]  # a wide x does not depend on w

    def solver(ka, dt):
        lam = np.ldexp(1.0, 2 * ka).astype(dt)
        if route in ("qr", "cholesky"):
            return lambda a, b, w: jaxlsq.lstsq(a, b, method=route).x
        if route == "factorize":
            return lambda a, b, w: jaxlsq.factorize(a).solve(b)
        if route == "ridge":
            return lambda a, b, w: jaxlsq.lstsq(a, b, l2_regularizer=lam).x
        if weighted:
            method = "qr" if route == "qr_weights" else "svd"
            return lambda a, b, w: jaxlsq.lstsq(a, b, weights=w, method=method).x
        return lambda a, b, w: jaxlsq.lstsq(a, b).x

    def reference(a, b, w):
        if route == "ridge":  # lam = 1 at a0
            return jnp.linalg.solve(a.T @ a + jnp.eye(a.shape[1]), a.T @ b)
        if weighted:
            a, b = jnp.sqrt(w)[:, None] * a, jnp.sqrt(w)[:, None] * b
        return pinv_solve(a, b, None)

    def gradient(solve, c):
        return jax.grad(lambda a, b, w: jnp.sum(c * solve(a, b, w)), argnums=(0, 1, 2))

    x0, dx0 = jax.jvp(reference, (a0, b0, w0), (da0, db0, dw0))
    g0, h0 = jax.jvp(gradient(reference, c), (a0, b0, w0), (da0, db0, dw0))

    def programs(solve):
        grad = gradient(solve, c.astype(dtype))
        tangent = jax.jit(lambda *args: jax.jvp(solve, args[:3], args[3:]))
        second = jax.jit(lambda *args: jax.jvp(grad, args[:3], args[3:])[1])
        return tangent, jax.jit(grad), second

    info = np.finfo(dtype)
    shared = None if route == "ridge" else programs(solver(0, dtype))  # ridge's lam is 2^(2 ka)
    for ka in (GRAM_EDGE[dtype], -GRAM_EDGE[dtype]):
        tangent, grad, second = shared or programs(solver(ka, dtype))
        for kb in (ka, 0):
            tag = f"{route} a = 2^{ka} a0, b = 2^{kb} b0"
            scaled = ((a0, ka), (b0, kb), (w0, 0), (da0, ka), (db0, kb), (dw0, 0))
            args = [_scaled(y, k, dtype) for y, k in scaled]
            x, dx = tangent(*args)
            assert_close(np.ldexp(np.asarray(x, np.float64), ka - kb), x0, rtol(dtype), 0, tag)
            dx = np.ldexp(np.asarray(dx, np.float64), ka - kb)
            assert_close(dx, dx0, 10 * rtol(dtype), 0, f"jvp, {tag}")
            scales = (kb - 2 * ka, -ka, kb - ka)
            for g, want, k, name in zip(grad(*args[:3]), g0, scales, "abw"):
                if name == "w" and not tall_weighted:
                    continue
                if info.minexp + 8 < k < info.maxexp - 8:
                    g = np.ldexp(np.asarray(g, np.float64), -k)
                    assert_close(g, want, 10 * rtol(dtype), 0, f"d/d{name}, {tag}")
            if kb == ka and route in ("svd", "ridge", "weights"):
                for h, want, k, name in zip(second(*args), h0, scales, "abw"):
                    if name == "w" and not tall_weighted:
                        continue
                    h = np.ldexp(np.asarray(h, np.float64), -k)
                    assert_close(h, want, 100 * rtol(dtype), 0, f"second order, d/d{name}, {tag}")


@pytest.mark.parametrize("method", ["svd", "qr", "cholesky"])
def test_zero_weight_rows_do_not_set_the_scale(method):
    """The scales are those of the weighted problem: a huge entry in a row of weight 0 (of b,
    or of a) must not flush the rows that count (found in review: x was 0, or NaN)."""
    a = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    b = np.array([1e-3, 2e-3, 1e36], np.float32)
    x = jaxlsq.lstsq(a, b, weights=np.array([1, 1, 0], np.float32), method=method).x
    assert_close(x, [1e-3, 2e-3], rtol(np.float32), 0)
    a = np.array([[1e35, 1e35], [1e-3, 2e-3], [3e-3, -1e-3], [2e-3, 2e-3]], np.float32)
    b = np.array([1, 1e-3, 2e-3, 1e-3], np.float32)
    x = jaxlsq.lstsq(a, b, weights=np.array([0, 1, 1, 1], np.float32), method=method).x
    want = np.linalg.lstsq(a[1:].astype(np.float64), b[1:].astype(np.float64), rcond=None)[0]
    assert_close(x, want, 10 * rtol(np.float32), 0)


@pytest.mark.parametrize("method", ["svd", "qr", "cholesky"])
@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize(
    "dtype, a, b",
    [
        # a tiny, b huge: a_scale / b_scale overflows where x = 2^100 (2^900) does not
        (np.float32, [[2.0**-110], [0]], [2.0**-10, 2.0**110]),
        (np.float64, [[2.0**-1000], [0]], [2.0**-100, 2.0**1000]),
        # b huge with the entry that counts 2^133 below its largest: scaling b's largest to
        # one would flush it; gelsd (and jaxlsq) bring b only just inside the range
        (np.float32, [[1.0], [0]], [1e-8, 1e32]),
        (np.float32, [[1.0], [1.0]], [1e-8, 1e32]),
    ],
)
def test_a_and_b_at_opposite_or_wide_scales(method, weights, dtype, a, b):
    a, b = np.array(a, dtype), np.array(b, dtype)
    w = np.ones(len(b), dtype) if weights else None
    x = jaxlsq.lstsq(a, b, weights=w, method=method).x
    want = np.linalg.lstsq(a.astype(np.float64), b.astype(np.float64), rcond=None)[0]
    assert_close(np.asarray(x, np.float64) / want, np.ones_like(want), rtol(dtype), 0)


def test_weighted_rank_is_the_plain_one_for_a_tiny_a():
    """The weighted solve takes its rank from the scaled singular values, as the plain solve
    does: scaled back, the smallest (2^-131 here) would be flushed to zero first. Both must give
    NumPy's rank of the unscaled matrix (2: its values' ratio is about 2^-22 > rcond)."""
    a0 = np.array([[1, 1], [1, 1 + 2.0**-20]])
    a = np.ldexp(a0, -110).astype(np.float32)
    b = np.ones(2, np.float32)
    want = np.linalg.lstsq(a0, np.ones(2), rcond=1e-8)[2]
    plain = jaxlsq.lstsq(a, b, rcond=1e-8)
    weighted = jaxlsq.lstsq(a, b, rcond=1e-8, weights=np.ones(2, np.float32))
    assert int(plain.rank) == int(weighted.rank) == want == 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(30, 6), (6, 30)])
@pytest.mark.parametrize("weights", [False, True])
def test_cholesky_with_a_large_regularizer_after_scaling(dtype, shape, weights):
    """method="cholesky" scales a to a largest entry near 1 and lam by a_scale^2. Where that
    makes lam's diagonal huge but finite (a at 2^-40 with lam = 1: 2^80 in float32), the normal
    equations hold x = A^H b / lam to rounding, yet the conditioning check overflowed ||G||_F and
    underflowed its iterates: x was NaN (found after a42cb3f). Also lam = 1e30 (float32) or
    1e290 (float64) beside an ordinary a, lam = 1 beside a at 2^-100 (float32; scaled to a largest
    entry of 1, x' = A^H b / lam a_scale^2 fell below the normal range) or 2^-900 (float64), and
    lam = 0 (a tiny a scaled fully)."""
    a0, b0 = _problem(6, shape)
    w = np.random.default_rng(7).uniform(0.5, 2.0, shape[0])
    cases = {
        np.float32: [(-40, 1.0), (-20, 1e-3), (-60, 1e3), (0, 1e30), (-100, 1.0), (-120, 0.0)],
        np.float64: [(-300, 1.0), (-200, 1e-3), (0, 1e290), (-900, 1.0), (-1015, 0.0)],
    }[dtype]
    for ka, lam in cases:
        a64 = np.ldexp(a0, ka)
        root = np.sqrt(w)[:, None] if weights else 1.0
        want = _ridge(root * a64, root * b0, lam)
        out = jaxlsq.lstsq(
            _scaled(a0, ka, dtype),
            b0.astype(dtype),
            method="cholesky",
            l2_regularizer=lam,
            weights=w.astype(dtype) if weights else None,
        )
        scale = np.max(np.abs(want))
        tag = f"a = 2^{ka} a0, lam = {lam}"
        assert_close(np.asarray(out.x, np.float64) / scale, want / scale, rtol(dtype), 0, tag)
        assert int(out.rank) == min(shape), tag


@pytest.mark.parametrize("shape", [(3, 5), (5, 3)])
@pytest.mark.parametrize(
    "dtype, ka, kb, kl",
    [
        (np.float32, -100, -60, -60),
        (np.float32, -104, -64, -61),
        (np.float32, -90, -60, -50),
        (np.float32, -120, -64, -103),
        (np.float64, -632, -512, -170),
        (np.float64, -760, -512, -340),
    ],
)
def test_cholesky_with_a_regularizer_and_a_small_b(shape, dtype, ka, kb, kl):
    """a tiny, b small but inside LAPACK's range, lam = 2^kl: the capped scale of a (see the test
    above) left x' = A^H b / lam' of the order of a b, below the normal range: x was 0, or off by
    a factor of 2, or NaN, with full rank (found in review of 4eb4bbd). b is scaled up to a
    largest entry near 1 for the normal equations."""
    rng = np.random.default_rng(8)
    a0, b0 = _entries(rng, shape), _entries(rng, (shape[0], 1))
    a64, b64, lam = np.ldexp(a0, ka), np.ldexp(b0, kb), 2.0**kl
    want = _ridge(a64, b64, lam)
    out = jaxlsq.lstsq(a64.astype(dtype), b64.astype(dtype), method="cholesky", l2_regularizer=lam)
    scale = np.max(np.abs(want))
    assert_close(np.asarray(out.x, np.float64) / scale, want / scale, rtol(dtype), 0)
    assert int(out.rank) == min(shape)
