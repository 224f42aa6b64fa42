"""method="qr" and method="cholesky": full-rank fast paths, against NumPy and the SVD path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    assert_close,
    assert_same_to_rounding,
    compiled,
    count_qrs,
    count_svds,
    low_rank,
    randn,
    with_singular_values,
)
from jax.test_util import check_grads

import jaxlsq
from jaxlsq import _full_rank

SHAPES = {"tall": (30, 5), "wide": (5, 30), "square": (6, 6)}
METHODS = ["qr", "cholesky"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128, np.complex64])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_numpy_at_full_rank(shape, method, dtype):
    rng = np.random.default_rng(1)
    complex_ = np.iscomplexobj(dtype(0))
    m, n = SHAPES[shape]
    a = with_singular_values(rng, m, n, np.linspace(1, 10, min(m, n)), complex_).astype(dtype)
    b = randn(rng, (m, 2), complex_).astype(dtype)
    wide = np.complex128 if complex_ else np.float64
    x_ref = np.linalg.lstsq(a.astype(wide), b.astype(wide), rcond=None)[0]
    # cond = 10: QR errs by O(eps cond), the normal equations by O(eps cond^2)
    tol = 100 * np.finfo(dtype).eps * (10 if method == "qr" else 100)
    for f in (jaxlsq.lstsq, jax.jit(jaxlsq.lstsq, static_argnames="method")):
        x, residuals, rank, s = f(a, b, method=method)
        assert x.dtype == dtype
        assert_close(x, x_ref, tol)
        assert int(rank) == min(m, n)
        assert np.all(np.isnan(s)) and s.shape == (min(m, n),)
        r = b.astype(wide) - a.astype(wide) @ np.asarray(x, wide)
        assert_close(residuals, np.sum(np.abs(r) ** 2, axis=0), tol)


@pytest.mark.parametrize("method", METHODS)
def test_singular_values_that_are_not_computed_have_nan_derivatives(method):
    # They are NaN; as a constant their derivative was 0, a finite answer in forward and reverse
    # mode (and under vmap) for an output that has none. x's own derivatives stay finite
    rng = np.random.default_rng(4)
    a, da, b = randn(rng, (30, 5)), randn(rng, (30, 5)), randn(rng, (30, 2))

    def values(a):
        return jaxlsq.lstsq(a, b, method=method).singular_values

    assert np.all(np.isnan(jax.jvp(values, (a,), (da,))[1]))
    assert np.all(np.isnan(jax.grad(lambda a: jnp.sum(values(a)))(a)))
    batch = jax.grad(lambda a: jnp.sum(jax.vmap(values)(a)))(np.stack([a, da]))
    assert np.all(np.isnan(batch))
    x_grad = jax.grad(lambda a: jnp.sum(jaxlsq.lstsq(a, b, method=method).x ** 2))(a)
    assert np.all(np.isfinite(x_grad))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", SHAPES)
def test_weights_and_ridge_agree_with_the_svd_path(shape, method):
    rng = np.random.default_rng(2)
    a, b = randn(rng, SHAPES[shape]), randn(rng, (SHAPES[shape][0], 3))
    w = rng.uniform(0.5, 2.0, a.shape[0])
    options = [{"weights": w}, {"l2_regularizer": 0.3}, {"weights": w, "l2_regularizer": 0.3}]
    for kwargs in options if method == "cholesky" else options[:1]:
        got = jaxlsq.lstsq(a, b, method=method, **kwargs)
        want = jaxlsq.lstsq(a, b, **kwargs)
        assert_close(got.x, want.x, 1e-10, err_msg=str(kwargs))
        assert_close(got.residuals, want.residuals, 1e-10, err_msg=str(kwargs))


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", SHAPES)
def test_derivatives_at_full_rank(shape, method, complex_):
    rng = np.random.default_rng(3)
    m, n = SHAPES[shape]
    a = with_singular_values(rng, m, n, np.linspace(1, 3, min(m, n)), complex_)
    b = randn(rng, (m, 2), complex_)
    da, db = randn(rng, a.shape, complex_), randn(rng, b.shape, complex_)

    def x_of(method):
        return lambda a, b: jaxlsq.lstsq(a, b, method=method)[:2]

    got = jax.jvp(x_of(method), (a, b), (da, db))
    want = jax.jvp(x_of("svd"), (a, b), (da, db))
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert_close(g, w, 1e-10)

    def loss(method):  # of the real and imaginary parts, for jax.hessian
        return lambda ar, ai: jnp.sum(
            jnp.abs(x_of(method)(ar + 1j * ai if complex_ else ar, b)[0]) ** 2
        )

    got_h = jax.jit(jax.hessian(loss(method), (0, 1)))(a.real, a.imag)
    want_h = jax.jit(jax.hessian(loss("svd"), (0, 1)))(a.real, a.imag)
    for g, w in zip(jax.tree_util.tree_leaves(got_h), jax.tree_util.tree_leaves(want_h)):
        assert_close(g, w, 1e-9)
    if not complex_:
        check_grads(x_of(method), (a, b), order=2, modes=("fwd", "rev"), eps=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", SHAPES)
def test_violated_assumption_gives_nan_never_a_finite_answer(shape, method):
    rng = np.random.default_rng(4)
    m, n = SHAPES[shape]
    cases = {"rank_deficient": low_rank(rng, m, n, 2)}
    if method == "cholesky":  # cond 1e7: eps cond^2 = 2e-2 > 1e-3
        cases["ill_conditioned"] = with_singular_values(rng, m, n, np.geomspace(1, 1e-7, min(m, n)))
    for name, a in cases.items():
        b = randn(rng, (m,))
        out = jax.jit(lambda a, b: jaxlsq.lstsq(a, b, method=method))(a, b)
        assert np.all(np.isnan(out.x)) and np.all(np.isnan(out.residuals)), name
        assert int(out.rank) < min(m, n), name
        grad = jax.grad(lambda a: jnp.sum(jaxlsq.lstsq(a, b, method=method).x))(a)
        assert np.all(np.isnan(grad)), name
        _, tangent = jax.jvp(lambda a: jaxlsq.lstsq(a, b, method=method).x, (a,), (a,))
        assert np.all(np.isnan(tangent)), name


@pytest.mark.parametrize("method", METHODS)
def test_no_svd_in_the_compiled_program(method):
    rng = np.random.default_rng(5)
    a, b = randn(rng, (60, 12)), randn(rng, (60,))

    def value_and_grad(a, b):
        return jax.value_and_grad(lambda a: jnp.sum(jaxlsq.lstsq(a, b, method=method).x ** 2))(a)

    assert count_svds(value_and_grad, a, b) == 0
    assert count_qrs(value_and_grad, a, b) == (1 if method == "qr" else 0)


def test_errors():
    a, b = np.eye(3), np.ones(3)
    with pytest.raises(ValueError, match="jaxlsq.lstsq: method must be one of 'svd', 'qr', 'chol"):
        jaxlsq.lstsq(a, b, method="lu")
    with pytest.raises(ValueError, match="method='qr' has no ridge term"):
        jaxlsq.lstsq(a, b, method="qr", l2_regularizer=0.1)


@pytest.mark.parametrize("method", METHODS)
def test_batch_dimensions_broadcast(method):
    rng = np.random.default_rng(6)
    a, b = randn(rng, (6, 3)), randn(rng, (4, 6, 2))
    assert_close(jaxlsq.lstsq(a, b, method=method).x, jaxlsq.lstsq(a, b).x, 1e-10)
    a_wide = randn(rng, (2, 1, 3, 6))
    assert_close(
        jaxlsq.lstsq(a_wide, b[:, :3], method=method).x, jaxlsq.lstsq(a_wide, b[:, :3]).x, 1e-10
    )
    if method == "cholesky":
        lam = jnp.array([0.1, 1.0])
        got = jax.jit(lambda lam: jaxlsq.lstsq(a, b[0, :, 0], l2_regularizer=lam, method=method))
        assert_close(got(lam).x, jaxlsq.lstsq(a, b[0, :, 0], l2_regularizer=lam).x, 1e-10)


def test_qr_flags_columns_that_a_zero_weight_makes_dependent():
    """4 x 4 with one zero weight has rank 3: R's last diagonal entry is rounding, which can
    exceed eps max(M, N); every answer must be NaN, never a finite one."""
    for seed in range(100):
        rng = np.random.default_rng(seed)
        a, b = rng.standard_normal((4, 4)), rng.standard_normal(4)
        out = jaxlsq.lstsq(a, b, weights=np.array([0.0, 1.0, 1.0, 1.0]), method="qr")
        assert np.all(np.isnan(out.x)), seed


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_qr_check_passes_well_conditioned_large_problems(dtype):
    """The check's margin is capped at sqrt(eps): float32 with 10,000 rows (where 1e3 eps M > 1
    would flag every matrix) and cond 100 at 200 rows solve, and agree with NumPy."""
    rng = np.random.default_rng(30)
    for m, n, cond in ((10_000, 20, 10.0), (200, 50, 100.0)):
        a = with_singular_values(rng, m, n, np.geomspace(1, 1 / cond, n)).astype(dtype)
        b = rng.standard_normal((m, 2)).astype(dtype)
        out = jaxlsq.lstsq(a, b, method="qr")
        assert int(out.rank) == n
        want = np.linalg.lstsq(a.astype(float), b.astype(float), rcond=None)[0]
        assert_close(out.x, want, 100 * np.finfo(dtype).eps * cond)


@pytest.mark.parametrize("method", METHODS)
def test_zero_weights_have_finite_derivatives_from_the_weighted_normal_equations(method):
    """A zero weight drops its row; the derivative in w there is finite, the one of
    x = (A^T W A)^{-1} A^T W b (a reference smooth in w, without jaxlsq), not the infinite chain
    rule through sqrt(w); and qr's rule reuses the solve's one QR."""
    rng = np.random.default_rng(7)
    a, b = randn(rng, (12, 3)), randn(rng, (12, 2))
    w = rng.uniform(0.5, 2.0, 12)
    w[[2, 5]] = 0.0

    def ours(a, b, w):
        return jnp.sum(jaxlsq.lstsq(a, b, weights=w, method=method).x ** 2)

    def reference(a, b, w):
        return jnp.sum(jnp.linalg.solve((a.T * w) @ a, (a.T * w) @ b) ** 2)

    got = jax.grad(ours, argnums=(0, 1, 2))(a, b, w)
    want = jax.grad(reference, argnums=(0, 1, 2))(a, b, w)
    for g, v in zip(got, want):
        assert np.all(np.isfinite(g))
        assert_close(g, v, 1e-9)
    # a direction that leaves the zero weights alone, in forward mode
    dw = np.where(w > 0, rng.standard_normal(12), 0.0)
    tangents = (np.zeros_like(a), np.zeros_like(b), dw)
    assert_close(
        jax.jvp(ours, (a, b, w), tangents)[1], jax.jvp(reference, (a, b, w), tangents)[1], 1e-9
    )
    if method == "qr":
        assert count_qrs(jax.jit(jax.grad(ours, argnums=(0, 1, 2))), a, b, w) == 1


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weights"])
@pytest.mark.parametrize("form", ["leading", "vmap"])
def test_qr_on_a_batch_factored_in_chunks(monkeypatch, request, form, weighted):
    """method="qr" factors a tall batch as the plain solve does: one QR of [a, b], a chunk of
    problems at a time where the batch passes CHUNK_BYTES, masking and scaling a as each chunk is
    read. NumPy's x for every full-rank member (some far outside LAPACK's range), NaN for the
    rank-deficient ones and a non-finite one, and the whole batch's answer and gradients to
    rounding (bit for bit on jaxlib 0.10.2; see assert_same_to_rounding)."""
    rng = np.random.default_rng(31)
    m, n = 30, 5
    base = randn(rng, (4, m, n))
    base[1] = with_singular_values(rng, m, n, [1.0, 0.5, 0.1, 0.01, 0.0])
    a = np.concatenate([base, base * 2.0**-1000, base * 2.0**900])  # 12 problems
    a[6, 2, 3] = np.nan
    nan_members = [1, 5, 6, 9]
    b, w = randn(rng, (12, m, 1)), rng.uniform(0.5, 2.0, (12, m))
    # three problems to a chunk (four chunks); unrolled triangular solves in both programs
    monkeypatch.setattr(_full_rank, "UNROLLED_BATCH", 2)
    monkeypatch.setattr(_full_rank, "_chunks_apply", lambda: True)  # the tests simulate 8 devices
    request.addfinalizer(jax.clear_caches)  # no program traced with these constants stays

    def solve(a, b, w):
        return jaxlsq.lstsq(a, b, method="qr", weights=w if weighted else None)

    solve = jax.vmap(solve) if form == "vmap" else solve

    def loss(a, b, w):
        return jnp.sum(jnp.nan_to_num(solve(a, b, w).x) ** 2)

    outs = {}
    for chunk_bytes, name in ((3 * m * (n + 1) * 8, "chunks"), (1 << 40, "whole")):
        monkeypatch.setattr(_full_rank, "CHUNK_BYTES", chunk_bytes)
        jax.clear_caches()  # lstsq's programs were traced with the other CHUNK_BYTES
        assert (" while(" in compiled(solve, a, b, w).as_text()) == (name == "chunks"), name
        gradients = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(a, b, w)
        outs[name] = jax.jit(solve)(a, b, w), gradients
    for got, want in zip(jax.tree.leaves(outs["chunks"]), jax.tree.leaves(outs["whole"])):
        assert_same_to_rounding(got, want)
    root = np.sqrt(w if weighted else np.ones_like(w))[..., None]
    x = outs["chunks"][0].x
    for i in range(12):
        if i in nan_members:
            assert np.all(np.isnan(x[i])), i
            continue
        want = np.linalg.lstsq(root[i] * a[i], root[i] * b[i], rcond=None)[0]
        assert_close(x[i], want, 1e-12, err_msg=str(i))
    assert np.all(np.isfinite(np.asarray(outs["chunks"][1][0])[[0, 2, 3]]))  # others: inf or NaN


def test_qr_forms_no_masked_copy_of_a_large_batch(monkeypatch, request):
    """method="qr" masks and scales a where its chunks read it, as the plain solve does, so that
    its program holds no whole-batch copy of a: its temporaries stay within the plain solve's.
    (With a masked, scaled copy made first, 10,000 64x8 float32 problems took 31.9 MiB of
    temporaries against the plain solve's 14.9; with 12.5 now. Past 32 MiB glibc's malloc maps
    them afresh on every call: BENCHMARKS.md, Page faults.)"""
    monkeypatch.setattr(_full_rank, "_chunks_apply", lambda: True)  # the tests simulate 8 devices
    jax.clear_caches()
    request.addfinalizer(jax.clear_caches)
    a, b = jnp.ones((10_000, 64, 8), jnp.float32), jnp.ones((10_000, 64, 1), jnp.float32)

    def temporaries(method):
        solve = compiled(lambda a, b: jaxlsq.lstsq(a, b, method=method).x, a, b)
        return solve.memory_analysis().temp_size_in_bytes

    assert temporaries("qr") <= 1.1 * temporaries("svd")


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weights"])
@pytest.mark.parametrize("shape", ["tall", "wide"])
def test_qr_hessian_of_a_vmapped_solve(shape, weighted):
    """jax.hessian of a function that vmaps the qr solve: it failed to lower for a tall a (an
    unbatched identity beside the batched R^{-1} in the rule's pair); now the svd method's."""
    rng = np.random.default_rng(32)
    m, n = SHAPES[shape]
    a, b = randn(rng, (3, m, n)), randn(rng, (3, m, 2))
    w = rng.uniform(0.5, 2.0, (3, m))

    def loss(method):
        def solve(a, b, w):
            return jaxlsq.lstsq(a, b, method=method, weights=w if weighted else None).x

        return lambda a: jnp.sum(jax.vmap(solve)(a, b, w) ** 2)

    got = jax.jit(jax.hessian(loss("qr")))(a)
    assert_close(got, jax.jit(jax.hessian(loss("svd")))(a), 1e-9)
