"""Values, shapes, dtypes and errors of jaxlsq.lstsq against numpy.linalg.lstsq in float64."""

import re

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    assert_close,
    compiled,
    count_qrs,
    low_rank,
    randn,
    rtol,
    with_singular_values,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import jaxlsq

jit_lstsq = jax.jit(jaxlsq.lstsq)
TRANSFORMS = {"eager": jaxlsq.lstsq, "jit": jit_lstsq}

SHAPES = {
    "tall": (9, 4),
    "wide": (3, 7),
    "square": (5, 5),
    "tall_rank_2": (9, 4, 2),
    "wide_rank_2": (4, 8, 2),
    "square_rank_3": (6, 6, 3),
    # through the QR reduction (M >= 2N or N >= 2M) and just below it
    "very_tall_rank_3": (60, 7, 3),
    "very_wide_rank_3": (6, 50, 3),
    "near_square_tall": (7, 4),
    "near_square_wide": (4, 7),
}


def make(rng, spec, complex_):
    m, n, *r = spec
    if r:
        return low_rank(rng, m, n, r[0], complex_)
    return randn(rng, (m, n), complex_)


def numpy_reference(a, b, rcond=None):
    """NumPy's answer in float64/complex128; residuals filled in where NumPy leaves them out.

    The default cutoff is the one for a's own dtype (as NumPy would use on it), not float64's.
    """
    if rcond is None:
        rcond = np.finfo(a.dtype).eps * max(a.shape)
    a64 = a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)
    b64 = b.astype(a64.dtype if np.iscomplexobj(b) else np.float64)
    x, _, rank, s = np.linalg.lstsq(a64, b64, rcond=rcond)
    r = b64 - a64 @ x
    residuals = np.sum(np.abs(r) ** 2, axis=0)
    return x, np.atleast_1d(residuals), rank, s


def check_against_numpy(result, a, b, rcond=None, tol=1e-10):
    x, residuals, rank, s = numpy_reference(a, b, rcond)
    assert int(result.rank) == rank
    assert result.x.shape == x.shape
    assert result.residuals.shape == residuals.shape
    scale = max(1.0, np.abs(x).max(initial=0))
    np.testing.assert_allclose(result.x, x, atol=tol * scale, rtol=0)
    np.testing.assert_allclose(
        result.singular_values, s, atol=tol * max(1, s.max(initial=0)), rtol=0
    )
    np.testing.assert_allclose(
        result.residuals, residuals, atol=tol * max(1, np.abs(b).max() ** 2), rtol=0
    )


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [None, 1, 3], ids=["vector_b", "K1", "K3"])
def test_matches_numpy(shape, complex_, transform, k):
    rng = np.random.default_rng(abs(hash((shape, complex_, k))) % 2**32)
    a = make(rng, SHAPES[shape], complex_)
    b = randn(rng, (a.shape[0],) if k is None else (a.shape[0], k), complex_)
    result = TRANSFORMS[transform](a, b)
    assert isinstance(result, jaxlsq.LstsqResult)
    check_against_numpy(result, a, b)  # NumPy's x is the minimum-norm one
    assert result.rank.dtype == jnp.int32


def test_unpacks_like_numpy_and_jnp():
    rng = np.random.default_rng(0)
    a, b = randn(rng, (6, 3)), randn(rng, (6,))
    x, residuals, rank, s = jaxlsq.lstsq(a, b)
    xj, rj, rankj, sj = jnp.linalg.lstsq(a, b)
    assert x.shape == xj.shape and residuals.shape == rj.shape and s.shape == sj.shape
    assert rank.shape == np.shape(rankj)


@pytest.mark.parametrize(
    "rcond, expected_rank",
    [
        # singular values (1, 0.5, 0.25, 1e-3, 5e-17): NumPy's cutoff drops s <= rcond * s_max
        (None, 4),
        (0.5, 1),  # 0.5 itself is dropped: <=, not <
        (0.25, 2),
        (0.2, 3),
        (1e-3, 3),
        (9e-4, 4),
        (0.0, 4),  # LAPACK: rcond <= 0 means eps / 2, and 5e-17 < eps / 2
        (-1.0, 4),
        (1.0, 4),  # LAPACK: rcond >= 1 also means eps / 2
        (3.0, 4),
    ],
)
def test_rcond_rule_is_numpys(rcond, expected_rank):
    a = np.diag([1.0, 0.5, 0.25, 1e-3, 5e-17])
    b = np.arange(1.0, 6.0)
    assert np.linalg.lstsq(a, b, rcond=rcond)[2] == expected_rank  # the reference itself
    for solver in TRANSFORMS.values():
        result = solver(a, b, rcond)
        assert int(result.rank) == expected_rank
        check_against_numpy(result, a, b, rcond)


def test_rcond_traced_under_jit_does_not_recompile():
    rng = np.random.default_rng(3)
    a = with_singular_values(rng, 8, 5, [1, 0.5, 0.1, 1e-2, 1e-4])
    b = randn(rng, (8,))
    traces = []

    @jax.jit
    def rank_of(rcond):
        traces.append(1)
        return jaxlsq.lstsq(a, b, rcond).rank

    ranks = [int(rank_of(r)) for r in (0.6, 0.3, 0.05, 5e-3, 1e-5)]
    assert ranks == [int(np.linalg.lstsq(a, b, rcond=r)[2]) for r in (0.6, 0.3, 0.05, 5e-3, 1e-5)]
    assert ranks == [1, 2, 3, 4, 5]
    assert len(traces) == 1


@pytest.mark.parametrize(
    "shape",
    [(5, 3), (3, 5), (4, 4), (4, 3, 1)],
    ids=["tall_full_rank", "wide", "square", "tall_rank_deficient"],
)
@pytest.mark.parametrize("vector", [True, False])
def test_numpy_resid_matches_numpy_exactly(shape, vector):
    rng = np.random.default_rng(4)
    a = make(rng, shape, False)
    b = randn(rng, (a.shape[0],) if vector else (a.shape[0], 2))
    got = jaxlsq.lstsq(a, b, numpy_resid=True).residuals
    want = np.linalg.lstsq(a, b, rcond=None)[1]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_numpy_resid_under_jit_raises_with_advice():
    with pytest.raises(
        ValueError,
        match=r"jaxlsq\.lstsq: numpy_resid=True needs concrete values.*"
        r"jnp\.where\(\(rank == N\)",
    ):
        jax.jit(lambda a, b: jaxlsq.lstsq(a, b, numpy_resid=True))(np.eye(3), np.ones(3))


def test_residuals_always_returned_under_jit():
    a, b = np.eye(3)[:, :2], np.ones(3)
    result = jit_lstsq(a, b)
    assert result.residuals.shape == (1,)
    np.testing.assert_allclose(result.residuals, [1.0])


@pytest.mark.parametrize(
    "a_shape, b_shape",
    [
        ((3, 6, 4), (3, 6, 2)),
        ((3, 6, 4), (6, 2)),  # shared b
        ((6, 4), (3, 6, 2)),  # shared a: one factorization
        ((2, 1, 4, 6), (1, 3, 4, 2)),  # broadcasting both ways, wide
        ((3, 6, 4), (6,)),  # b a vector only when b.ndim == 1
    ],
)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_batches_broadcast_and_stack(a_shape, b_shape, transform):
    rng = np.random.default_rng(5)
    a = randn(rng, a_shape)
    a[..., -1] = a[..., 0]  # rank-deficient members too
    b = randn(rng, b_shape)
    result = TRANSFORMS[transform](a, b)
    batch = np.broadcast_shapes(a_shape[:-2], b_shape[:-2] if len(b_shape) > 1 else ())
    n, k = a_shape[-1], (b_shape[-1] if len(b_shape) > 1 else None)
    assert result.x.shape == (*batch, n) + ((k,) if k else ())
    assert result.rank.shape == batch
    assert result.singular_values.shape == (*batch, min(a_shape[-2:]))
    assert result.residuals.shape == (*batch, k or 1)
    a_b = np.broadcast_to(a, (*batch, *a_shape[-2:]))
    b_b = np.broadcast_to(b, (*batch, *b_shape[-2:])) if k else b
    for idx in np.ndindex(*batch):
        one = jaxlsq.LstsqResult(*(out[idx] for out in result))
        check_against_numpy(one, a_b[idx], b_b[idx] if k else b)


@pytest.mark.parametrize("shape", [(400, 50), (50, 400), (60, 50)], ids=["tall", "wide", "square"])
@pytest.mark.parametrize("option", ["plain", "ridge", "weights"])
def test_one_a_for_a_batch_of_b_is_applied_once(shape, option):
    """One a (M, N) with b (32, M, 1): Q's reflectors and R's triangular solves take the 32
    problems as columns of one LAPACK call. Broadcast, a was copied once per problem (temporaries
    of 5.7 MiB for 400 x 50 float64, above the 4.9 of those copies, and 10-60x the time; 0.3 MiB
    folded). The answers are test_batches_broadcast_and_stack's."""
    rng = np.random.default_rng(14)
    a, b = randn(rng, shape), randn(rng, (32, shape[0], 1))
    kw = {"plain": {}, "ridge": {"l2_regularizer": 0.5}, "weights": {"weights": np.ones(shape[0])}}
    copies = 32 * a.nbytes

    def loss(a, b):
        return jnp.sum(jaxlsq.lstsq(a, b, **kw[option]).x ** 2)

    for f in (lambda a, b: jaxlsq.lstsq(a, b, **kw[option]).x, jax.value_and_grad(loss, (0, 1))):
        assert compiled(f, a, b).memory_analysis().temp_size_in_bytes < copies / 2


@pytest.mark.parametrize("shape", [(9, 4), (4, 8), (60, 7), (7, 4), (5, 5), (4, 7)])
def test_every_shape_goes_through_one_qr(shape):
    """The plain solve factors every shape by one QR (of a, or of a^H where M < N), near-square
    ones too, where factorize takes the SVD of a directly."""
    rng = np.random.default_rng(7)
    a, b = randn(rng, shape), randn(rng, (shape[0], 2))
    assert count_qrs(jaxlsq.lstsq, a, b) == 1
    near_square = max(shape) < 2 * min(shape)
    assert count_qrs(lambda a: jaxlsq.factorize(a).singular_values, a) == int(not near_square)


def _reductions(f, *args) -> int:
    return len(re.findall(r" reduce(?:-window)?\(", compiled(f, *args).as_text()))


def _closed_over_forms():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("rows",))
    return {
        "plain": lambda a, b: jaxlsq.lstsq(a, b).x,
        "ridge": lambda a, b: jaxlsq.lstsq(a, b, l2_regularizer=0.5).x,
        "weights": lambda a, b: jaxlsq.lstsq(a, b, weights=jnp.ones(a.shape[-2])).x,
        "qr": lambda a, b: jaxlsq.lstsq(a, b, method="qr").x,
        "factorize": lambda a, b: jaxlsq.factorize(a).singular_values,
        "solve": lambda a, b: jax.grad(lambda b: jnp.sum(jaxlsq.factorize(a).solve(b) ** 2))(b),
        "sharded": lambda a, b: jaxlsq.sharded_lstsq(a[0], b[0], mesh=mesh, axis_name="rows").x,
    }


def _closed_over_reference(form: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """What each of _closed_over_forms computes, from NumPy in float64."""
    pinv = np.linalg.pinv(a)
    if form == "ridge":
        gram = np.swapaxes(a, -1, -2) @ a + 0.5 * np.eye(a.shape[-1])
        return np.linalg.solve(gram, np.swapaxes(a, -1, -2) @ b)
    if form == "factorize":
        return np.linalg.svd(a, compute_uv=False)
    if form == "solve":  # d/db sum((A^+ b)^2) = 2 A^+H A^+ b
        return 2 * np.swapaxes(pinv, -1, -2) @ pinv @ b
    if form == "sharded":
        return np.linalg.lstsq(a[0], b[0], rcond=None)[0]
    return pinv @ b  # plain, weights of ones and qr: the minimum-norm solution


@pytest.mark.parametrize("array", [np.asarray, jnp.asarray], ids=["numpy", "jax"])
@pytest.mark.parametrize("form", list(_closed_over_forms()))
def test_a_closed_over_under_jit_is_computed_on_at_run_time(form, array):
    """An a (or factorization) closed over by a jit-compiled function is a constant of its
    program, and XLA evaluates computations on constants alone while it compiles, element by
    element: a's finiteness, scales and transposes took 11.7 s of compilation for 10,000 64x8
    float32 matrices (1.2 s with a as an argument). The program must compute them at run time,
    as it does with a as an argument: the same reductions (6 of the 7 forms had fewer before,
    all but the sharded one), and the same answer. Also for a NumPy a, which jnp.asarray turns
    into a tracer under jit."""
    f = _closed_over_forms()[form]
    rng = np.random.default_rng(15)
    a, b = array(randn(rng, (3, 8, 4))), randn(rng, (3, 8, 1))
    closed = jax.jit(lambda b: f(a, b))
    assert _reductions(lambda b: f(a, b), b) == _reductions(f, a, b)
    np.testing.assert_allclose(closed(b), jax.jit(f)(a, b), rtol=1e-12, atol=1e-12)
    assert_close(closed(b), _closed_over_reference(form, np.asarray(a), b), 1e-10)


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("shape", [(3, 40, 8), (3, 8, 40)], ids=["tall", "wide"])
def test_batched_tall_and_wide_with_rank_deficient_members(shape, complex_):
    rng = np.random.default_rng(8)
    batch, m, n = shape
    a = randn(rng, shape, complex_)
    a[1] = low_rank(rng, m, n, 3, complex_)
    a[2, :, -1] = 0
    b = randn(rng, (batch, m, 2), complex_)
    for result in (jaxlsq.lstsq(a, b), jax.vmap(jaxlsq.lstsq)(a, b)):
        for i in range(batch):
            check_against_numpy(jaxlsq.LstsqResult(*(out[i] for out in result)), a[i], b[i])


@pytest.mark.parametrize("shape", [(40, 8), (8, 40)], ids=["tall", "wide"])
def test_vmap_over_columns_of_b_through_the_reduction(shape):
    """One QR for all mapped right-hand sides, with the same answers as the (M, K) call."""
    rng = np.random.default_rng(9)
    a = low_rank(rng, *shape, 5)
    b = randn(rng, (shape[0], 6))
    by_column = jax.jit(
        jax.vmap(
            lambda bk: jaxlsq.lstsq(a, bk), in_axes=1, out_axes=jaxlsq.LstsqResult(1, 0, None, None)
        )
    )
    result = by_column(b)
    check_against_numpy(jaxlsq.LstsqResult(result.x, result.residuals[:, 0], *result[2:]), a, b)
    assert count_qrs(by_column, b) == 1


def test_vmap_over_a_and_b_matches_batched_call():
    rng = np.random.default_rng(6)
    a, b = randn(rng, (4, 7, 3)), randn(rng, (4, 7, 2))
    batched = jaxlsq.lstsq(a, b)
    for in_axes, args in [((0, 0), (a, b)), ((0, None), (a, b[0])), ((None, 0), (a[0], b))]:
        mapped = jax.vmap(jaxlsq.lstsq, in_axes=in_axes)(*args)
        direct = jaxlsq.lstsq(*args)
        for got, want in zip(mapped, direct):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    mapped = jax.vmap(jaxlsq.lstsq)(a, b)
    np.testing.assert_allclose(mapped.x, batched.x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(6, 3), (3, 6), (4, 4)])
@pytest.mark.parametrize("option", ["b", "b ridge", "b weights", "b qr", "lam", "w", "w lam"])
def test_vmap_with_b_lam_or_w_of_more_batch_dimensions_than_a(shape, option):
    """Under vmap, each mapped problem's b (L, M, K), lam (L,) or w (L, M) batched beyond its a
    (M, N) broadcasts as in a single call, whose outputs and gradients vmap must give for each
    mapped problem (one of them rank-deficient). Until 2026-12-06 the batched calls' vmap rules
    lined a's batch dimensions up with the wrong ones of b: errors, for the plain solve on every
    shape (found in review), and with lam alone on a wide a; and a first fix that gave a, but not
    b, leading axes of 1 mixed the problems up with lam (x off by 0.7)."""
    rng = np.random.default_rng(13)
    m, n = shape
    a = randn(rng, (2, m, n))
    a[1, :, -1] = a[1, :, 0]
    inner = "b" in option.split()
    b = randn(rng, (2, 4, m, 1) if inner else (2, m, 1))
    lam = rng.uniform(0.5, 2.0, (2, 4)) if "lam" in option.split() else np.full(2, 0.3)
    w = rng.uniform(0.5, 2.0, (2, 4, m) if option.startswith("w") else (2, m))
    kw = {
        "b": lambda lam, w: {},
        "b ridge": lambda lam, w: {"l2_regularizer": lam},
        "b weights": lambda lam, w: {"weights": w},
        "b qr": lambda lam, w: {"method": "qr"},
        "lam": lambda lam, w: {"l2_regularizer": lam},
        "w": lambda lam, w: {"weights": w},
        "w lam": lambda lam, w: {"weights": w, "l2_regularizer": lam},
    }[option]

    def solve(a, b, lam, w):
        return tuple(jaxlsq.lstsq(a, b, **kw(lam, w)))

    def grad(a, b, lam, w):
        return jax.grad(lambda a, b: jnp.sum(solve(a, b, lam, w)[0] ** 2), (0, 1))(a, b)

    for f in (solve, grad):
        mapped = jax.vmap(f)(a, b, lam, w)
        for i in range(2):
            for got, want in zip(mapped, f(a[i], b[i], lam[i], w[i])):
                np.testing.assert_allclose(got[i], want, rtol=1e-12, atol=1e-12, err_msg=option)


@pytest.mark.parametrize(
    "a_dtype, b_dtype, out",
    [
        (np.float32, np.float32, np.float32),
        (np.float64, np.float64, np.float64),
        (np.complex64, np.complex64, np.complex64),
        (np.complex128, np.complex128, np.complex128),
        (np.float32, np.float64, np.float64),
        (np.float32, np.complex64, np.complex64),
        # integers promote like jnp.linalg.lstsq (x64 on in the tests): int32 and narrower to
        # float32, int64 to float64
        (np.int32, np.int32, np.float32),
        (np.bool_, np.int8, np.float32),
        (np.int64, np.int16, np.float64),
        (np.int32, np.float32, np.float32),  # JAX's lattice, not NumPy's
        (np.float16, np.float16, np.float16),
        (jnp.bfloat16, jnp.bfloat16, jnp.bfloat16),
    ],
)
def test_dtypes(a_dtype, b_dtype, out):
    rng = np.random.default_rng(7)
    a = (rng.standard_normal((8, 3)) * 3).round()
    a[:, 0] = np.abs(a[:, 0]) + 1
    b = (rng.standard_normal((8, 2)) * 3).round()
    if np.issubdtype(b_dtype, np.bool_):
        b = b > 0
    a_cast, b_cast = jnp.asarray(a).astype(a_dtype), jnp.asarray(b).astype(b_dtype)
    result = jaxlsq.lstsq(a_cast, b_cast)
    assert result.x.dtype == out
    assert result.residuals.dtype == jnp.finfo(out).dtype
    assert result.singular_values.dtype == jnp.finfo(out).dtype
    assert result.rank.dtype == jnp.int32
    if out not in (np.float16, jnp.bfloat16):  # which jnp.linalg.lstsq does not take
        assert jnp.linalg.lstsq(a_cast, b_cast)[0].dtype == out
    a_ref, b_ref = (
        np.asarray(a_cast.astype(jnp.complex128)),
        np.asarray(b_cast.astype(jnp.complex128)),
    )
    tol = {16: 2e-2, 32: 1e-4, 64: 1e-11}[jnp.finfo(out).bits]
    if out == jnp.bfloat16:
        tol = 5e-2
    x_ref = np.linalg.lstsq(a_ref, b_ref, rcond=None)[0]
    got = np.asarray(result.x.astype(jnp.complex128))
    np.testing.assert_allclose(got, x_ref, atol=tol * np.abs(x_ref).max())


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
def test_single_precision_accuracy(dtype):
    rng = np.random.default_rng(8)
    a = with_singular_values(rng, 30, 10, np.logspace(0, -2, 10), np.iscomplexobj(dtype(0)))
    b = randn(rng, (30, 2), np.iscomplexobj(dtype(0)))
    result = jaxlsq.lstsq(a.astype(dtype), b.astype(dtype))
    x = numpy_reference(a.astype(dtype), b.astype(dtype))[0]
    np.testing.assert_allclose(result.x, x, atol=100 * rtol(dtype) * np.abs(x).max())


@pytest.mark.parametrize(
    "a_shape, b_shape",
    [
        ((5, 0), (5, 2)),
        ((0, 3), (0, 2)),
        ((0, 0), (0, 1)),
        ((4, 3), (4, 0)),
        ((5, 0), (5,)),
        ((2, 0, 3), (2, 0, 2)),
    ],
)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_empty_like_numpy(a_shape, b_shape, transform):
    a, b = np.ones(a_shape), np.ones(b_shape)
    result = TRANSFORMS[transform](a, b)
    if len(a_shape) == 2:
        x, residuals, rank, s = np.linalg.lstsq(a, b, rcond=None)
        np.testing.assert_array_equal(result.x, x)
        assert int(result.rank) == rank
        # values below eps * s_max are rounding noise, compared on that absolute scale
        np.testing.assert_allclose(
            result.singular_values, s, rtol=0, atol=1e-14 * max(s, default=1)
        )
        if residuals.size:  # where NumPy returns residuals, they agree
            np.testing.assert_allclose(result.residuals, residuals)
        np.testing.assert_array_equal(jaxlsq.lstsq(a, b, numpy_resid=True).residuals, residuals)
    else:
        assert result.x.shape == (2, 3, 2) and not np.any(result.x)
        assert result.rank.shape == (2,) and result.singular_values.shape == (2, 0)


@pytest.mark.parametrize("shape", [(8, 3), (3, 8), (4, 3), (2, 8, 3)])
def test_no_right_hand_sides_like_numpy(shape):
    """K = 0: x (..., N, 0) and residuals (..., 0), with a's rank and singular values."""
    a = np.random.default_rng(5).standard_normal(shape)
    b = np.zeros((*shape[:-1], 0))
    for solve in (jaxlsq.lstsq, jax.jit(jaxlsq.lstsq)):
        out = solve(a, b)
        assert out.x.shape == (*shape[:-2], shape[-1], 0)
        assert out.residuals.shape == (*shape[:-2], 0)
        for i in np.ndindex(*shape[:-2]):
            _, _, rank, s = np.linalg.lstsq(a[i], b[i], rcond=None)
            assert int(out.rank[i]) == rank
            np.testing.assert_allclose(out.singular_values[i], s, rtol=1e-12)


def test_empty_gradients_are_zero_and_finite():
    a, b = np.ones((5, 0)), np.arange(5.0)
    grads = jax.grad(lambda a, b: jaxlsq.lstsq(a, b).residuals.sum(), argnums=(0, 1))(a, b)
    assert grads[0].shape == (5, 0)
    np.testing.assert_allclose(grads[1], 2 * b)  # residuals are ||b||^2 when N == 0


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_gives_nan_never_a_finite_answer(transform, bad):
    rng = np.random.default_rng(9)
    a, b = randn(rng, (6, 3)), randn(rng, (6, 2))
    a_bad = a.copy()
    a_bad[2, 1] = bad
    result = TRANSFORMS[transform](a_bad, b)
    assert np.all(np.isnan(result.x)) and np.all(np.isnan(result.residuals))
    assert np.all(np.isnan(result.singular_values)) and int(result.rank) == 0
    b_bad = b.copy()
    b_bad[4, 1] = bad
    result = TRANSFORMS[transform](a, b_bad)
    assert np.all(np.isnan(result.x[:, 1])) and np.isnan(result.residuals[1])
    good = numpy_reference(a, b[:, :1])
    np.testing.assert_allclose(result.x[:, :1], good[0], atol=1e-12)  # other columns unharmed
    # in a batch only the affected problem is NaN
    batch = TRANSFORMS[transform](np.stack([a, a_bad]), np.stack([b, b]))
    assert np.all(np.isfinite(batch.x[0])) and np.all(np.isnan(batch.x[1]))


ERRORS = [
    (
        np.ones(3),
        np.ones(3),
        ValueError,
        r"jaxlsq.lstsq: a must have shape (M, N) or (..., M, N); got shape (3,) (1-D)",
    ),
    (
        np.ones((3, 2)),
        np.float64(1.0),
        ValueError,
        r"jaxlsq.lstsq: b must have shape (M,), (M, K) or (..., M, K); got a scalar",
    ),
    (
        np.ones((6, 2)),
        np.ones(7),
        ValueError,
        r"jaxlsq.lstsq: b has 7 rows but a has 6 (a has shape (6, 2), b has shape (7,)); b must have shape (6,) or (..., 6, K).",
    ),
    (np.ones((6, 2)), np.ones((5, 3)), ValueError, r"jaxlsq.lstsq: b has 5 rows but a has 6"),
    (
        np.ones((2, 6, 2)),
        np.ones((3, 6, 1)),
        ValueError,
        r"jaxlsq.lstsq: the batch dimensions of a (2,) and of b (3,) do not broadcast",
    ),
    (
        np.array([["a", "b"]]),
        np.ones(1),
        TypeError,
        r"jaxlsq.lstsq: a has dtype <U1, which is not numeric",
    ),
    (
        np.ones((2, 2)),
        np.array(["x", "y"], dtype=object),
        TypeError,
        r"jaxlsq.lstsq: b has dtype object, which is not numeric",
    ),
]


@pytest.mark.parametrize("a, b, error, message", ERRORS)
def test_errors_name_the_function_and_say_what_to_pass(a, b, error, message):
    with pytest.raises(error, match=re.escape(message)):
        jaxlsq.lstsq(a, b)


def test_rcond_errors():
    with pytest.raises(
        ValueError,
        match=re.escape(
            "jaxlsq.lstsq: rcond must be a scalar (or None); got an array of shape (2,)"
        ),
    ):
        jaxlsq.lstsq(np.eye(2), np.ones(2), np.ones(2))
    with pytest.raises(
        TypeError,
        match=re.escape("jaxlsq.lstsq: rcond must be a real number or None; got dtype complex128"),
    ):
        jaxlsq.lstsq(np.eye(2), np.ones(2), 1j)
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match=re.escape("jaxlsq.lstsq: rcond must be finite")):
            jaxlsq.lstsq(np.eye(2), np.ones(2), bad)
    for name, options in (
        ("weights", {"weights": [[1.0, 1.0], [1.0]]}),
        ("l2_regularizer", {"l2_regularizer": [[1.0], [1.0, 2.0]]}),
        ("rcond", {"rcond": [[1e-3], [1e-3, 1.0]]}),
    ):
        what = "a real number" if name == "rcond" else "an array"
        with pytest.raises(TypeError, match=re.escape(f"jaxlsq.lstsq: {name} must be {what}")):
            jaxlsq.lstsq(np.eye(2), np.ones(2), **options)


def test_an_rcond_beyond_float32_s_range_follows_lapack_s_rule():
    """1e39 is finite, so >= 1 means eps / 2 (as NumPy), though float32 cannot hold it."""
    a, b = np.diag([1.0, 0.5, 1e-3]).astype(np.float32), np.ones(3, np.float32)
    for r in (1e39, -1e39):
        out = jaxlsq.lstsq(a, b, r)
        x, _, rank, _ = np.linalg.lstsq(a.astype(np.float64), b.astype(np.float64), rcond=r)
        assert int(out.rank) == rank == 3
        np.testing.assert_allclose(out.x, x, rtol=1e-5)
        assert int(jaxlsq.factorize(a, r).rank) == 3


def test_a_traced_non_finite_rcond_gives_nan_never_a_finite_answer():
    a, b = np.diag([1.0, 0.5, 1e-3]), np.ones((3, 2))
    for bad in (jnp.nan, jnp.inf):
        out = jax.jit(jaxlsq.lstsq)(a, b, bad)
        assert np.all(np.isnan(out.x)) and np.all(np.isnan(out.residuals))
        assert int(out.rank) == 0
        np.testing.assert_allclose(out.singular_values, [1.0, 0.5, 1e-3], rtol=1e-15)  # no cutoff
        grads = jax.jit(jax.grad(lambda a, b, r: jnp.sum(jaxlsq.lstsq(a, b, r).x ** 2), (0, 1)))(
            a, b, bad
        )
        assert all(np.all(np.isnan(g)) for g in grads)
    empty = jax.jit(jaxlsq.lstsq)(np.ones((3, 0)), np.ones(3), jnp.nan)
    assert np.all(np.isnan(empty.residuals)) and empty.x.shape == (0,)
    empty = jax.jit(jaxlsq.lstsq)(np.ones((0, 2)), np.ones(0), jnp.nan)
    assert np.all(np.isnan(empty.x))


def test_numpy_resid_rejects_batches():
    with pytest.raises(
        ValueError,
        match=re.escape(
            "jaxlsq.lstsq: numpy_resid=True follows numpy.linalg.lstsq, which takes one matrix; got a batch of shape (2,)"
        ),
    ):
        jaxlsq.lstsq(np.ones((2, 3, 2)), np.ones((2, 3, 1)), numpy_resid=True)


@st.composite
def problems(draw):
    m = draw(st.integers(1, 7))
    n = draw(st.integers(1, 7))
    r = draw(st.integers(0, min(m, n)))
    k = draw(st.integers(1, 3))
    complex_ = draw(st.booleans())
    single = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    return m, n, r, k, complex_, single, seed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_property_random_shapes_ranks_dtypes(problem):
    m, n, r, k, complex_, single, seed = problem
    rng = np.random.default_rng(seed)
    a = low_rank(rng, m, n, r, complex_) if r else np.zeros((m, n))
    b = randn(rng, (m, k), complex_)
    dtype = (
        (np.complex64 if complex_ else np.float32)
        if single
        else (np.complex128 if complex_ else np.float64)
    )
    a_d, b_d = a.astype(dtype), b.astype(dtype)
    result = jit_lstsq(a_d, b_d)
    x, residuals, rank, s = numpy_reference(a_d, b_d)
    cut = np.finfo(dtype).eps * max(m, n) * s[0]
    if np.any((s > cut / 30) & (s < cut * 30)):  # rounding to the dtype put a value near the cutoff
        return
    assert int(result.rank) == rank == r
    cond = s[0] / s[r - 1] if r else 1.0
    tol = rtol(dtype) * 10 * cond
    np.testing.assert_allclose(result.x, x, atol=tol * max(1, np.abs(x).max()))
    np.testing.assert_allclose(result.singular_values, s, atol=rtol(dtype) * 10 * max(1, s.max()))
    # minimum norm: x is orthogonal to the null space of a (spanned by the dropped right vectors)
    vh = np.linalg.svd(a.astype(np.complex128), full_matrices=True)[2]
    null = vh[r:].conj().T
    assert np.abs(null.conj().T @ np.asarray(result.x, np.complex128)).max(initial=0) <= tol * max(
        1, np.abs(x).max()
    )


@settings(max_examples=25, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=5),
        # XLA flushes subnormal numbers to zero (as in all of JAX) where NumPy keeps them, and
        # then 1 / s overflows anyway: the property is about normal floats
        elements=st.floats(-4, 4, allow_nan=False, allow_subnormal=False, width=64),
    )
)
@example(a=np.array([[1.17549435e-38], [1.17549435e-38]]))
def test_property_arbitrary_entries(a):
    b = np.linspace(-1.0, 1.0, a.shape[0])
    result = jit_lstsq(a, b)
    x, residuals, rank, s = numpy_reference(a, b)
    if int(result.rank) != rank:  # a singular value within rounding of the cutoff: both valid
        cut = np.finfo(np.float64).eps * max(a.shape) * s[0]
        assert np.min(np.abs(s - cut)) <= 1e-13 * max(1.0, s[0])
        return
    cond = s[0] / s[rank - 1] if rank else 1.0
    # errors scale with ||A^+|| ||b||, not with ||x||: b nearly orthogonal to range(a) (or tiny
    # entries, found by hypothesis: a = 1.2e-38 * [1, 1]^T) makes x tiny next to its error bound
    scale = max(1.0, np.abs(x).max(), np.linalg.norm(b) / s[rank - 1] if rank else 0.0)
    np.testing.assert_allclose(result.x, x, atol=1e-12 * cond**2 * scale)
