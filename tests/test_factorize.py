"""jaxlsq.factorize: a factorization kept across calls, against lstsq and NumPy float64."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    CASES,
    assert_close,
    count_qrs,
    count_svds,
    lapack_calls,
    low_rank,
    problem,
    randn,
)

import jaxlsq

SHAPES = {"tall_qr": (30, 5), "wide_qr": (5, 30), "near_square": (8, 6)}


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("rank_deficient", [False, True], ids=["full", "deficient"])
@pytest.mark.parametrize("shape", SHAPES)
def test_solves_rank_and_singular_values_match(shape, rank_deficient, complex_):
    rng = np.random.default_rng(1)
    m, n = SHAPES[shape]
    a = low_rank(rng, m, n, 2, complex_) if rank_deficient else randn(rng, (m, n), complex_)
    b, c = randn(rng, (m, 3), complex_), randn(rng, (n,), complex_)
    f = jax.jit(jaxlsq.factorize)(a)  # returned from one jit ...
    x = jax.jit(lambda f, b: f.solve(b))(f, b)  # ... and passed into another
    want = jaxlsq.lstsq(a, b)
    assert_close(x, np.linalg.lstsq(a, b, rcond=None)[0], 1e-12)
    assert_close(x, want.x, 1e-13)
    assert int(f.rank) == int(want.rank) == (2 if rank_deficient else min(m, n))
    assert_close(f.singular_values, np.linalg.svd(a, compute_uv=False), 1e-13)
    assert_close(f.solve(b[:, 0]), want.x[:, 0], 1e-13)
    assert_close(f.solve_adjoint(c), np.linalg.lstsq(a.conj().T, c, rcond=None)[0], 1e-12)
    assert_close(f.solve(b, l2_regularizer=0.3), jaxlsq.lstsq(a, b, l2_regularizer=0.3).x, 1e-13)


def test_batches_and_vmap():
    rng = np.random.default_rng(2)
    a, b = randn(rng, (4, 12, 3)), randn(rng, (4, 12, 1))
    f = jaxlsq.factorize(a)
    assert f.rank.shape == (4,) and f.singular_values.shape == (4, 3)
    assert_close(f.solve(b), jaxlsq.lstsq(a, b).x, 1e-13)
    stacked = jax.vmap(jaxlsq.factorize)(a)
    x = jax.vmap(lambda f, b: f.solve(b))(stacked, b[..., 0])
    assert_close(x, jaxlsq.lstsq(a, b).x[..., 0], 1e-13)


@pytest.mark.parametrize("shape", [(60, 12), (12, 60), (20, 20)])
def test_a_loop_of_solves_factors_once(shape):
    rng = np.random.default_rng(3)
    a = randn(rng, shape)
    bs = randn(rng, (5, shape[0], 2))

    def many(a, bs):  # solves at different times in one program: a scan over right-hand sides
        f = jaxlsq.factorize(a)
        return jax.lax.scan(lambda carry, b: (carry + jnp.sum(f.solve(b)), f.solve(b)), 0.0, bs)

    assert count_svds(many, a, bs) == 1
    assert count_qrs(many, a, bs) == (0 if shape[0] == shape[1] else 1)
    f = jaxlsq.factorize(a)
    later = lambda f, bs: jax.vmap(f.solve)(bs)  # noqa: E731
    assert count_svds(later, f, bs) == 0 and count_qrs(later, f, bs) == 0
    # the kept factors are explicit: a solve is matrix products, no LAPACK call at all (on CPU)
    c = randn(rng, (shape[1], 2))
    both = lambda f, bs, c: (later(f, bs), f.solve_adjoint(c))  # noqa: E731
    assert jax.default_backend() != "cpu" or lapack_calls(both, f, bs, c) == []
    assert_close(jax.lax.scan(lambda c, b: (c, f.solve(b)), 0, bs)[1], later(f, bs), 1e-14)
    # the derivative rules take their pairs from f's factors: a differentiated solve in a later
    # program factors nothing either, also at second order
    loss = lambda f, a: jnp.sum(f._replace(a=a).solve(bs[0]) ** 2)  # noqa: E731
    grad_later = lambda f: jax.grad(partial(loss, f))(f.a)  # noqa: E731
    hessian_later = lambda f: jax.hessian(partial(loss, f))(f.a)  # noqa: E731
    for g in (grad_later, hessian_later):
        assert count_svds(g, f) == 0 and count_qrs(g, f) == 0
        assert jax.default_backend() != "cpu" or lapack_calls(g, f) == []
    want = jax.grad(lambda a: jnp.sum(jaxlsq.lstsq(a, bs[0]).x ** 2))(a)
    assert_close(jax.jit(grad_later)(f), want, 1e-10)


@pytest.mark.parametrize("case", CASES)
def test_derivatives_match_lstsq(case):
    a, b, rcond, curve, da, db, weights, model_error, cond = problem(case, False)
    c = np.ones(a.shape[1])

    def through_factorize(a, b):
        f = jaxlsq.factorize(a, rcond)
        return f.solve(b), f.solve(b, l2_regularizer=0.5), f.solve_adjoint(c), f.singular_values

    def through_lstsq(a, b):
        return (
            jaxlsq.lstsq(a, b, rcond).x,
            jaxlsq.lstsq(a, b, rcond, l2_regularizer=0.5).x,
            jaxlsq.lstsq(a.T, c, rcond).x,
            jaxlsq.lstsq(a, b, rcond).singular_values,
        )

    got = jax.jit(lambda a, b: jax.jvp(through_factorize, (a, b), (da, db)))(a, b)
    want = jax.jit(lambda a, b: jax.jvp(through_lstsq, (a, b), (da, db)))(a, b)
    # The two paths use different (equivalent) rules: they agree exactly at exact rank, and up
    # to the size of what the cutoff drops (model_error) where it drops a nonzero value.
    tol = max(1e-10 * cond**3, 10 * model_error)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert_close(g, w, tol)
    loss = lambda fn: lambda a: jnp.sum(fn(a, b)[0] ** 2) + jnp.sum(fn(a, b)[2] ** 2)  # noqa: E731
    assert_close(
        jax.jit(jax.hessian(loss(through_factorize)))(a),
        jax.jit(jax.hessian(loss(through_lstsq)))(a),
        tol,
    )


def test_errors_and_non_finite():
    with pytest.raises(ValueError, match=r"jaxlsq.factorize: a must have shape \(M, N\)"):
        jaxlsq.factorize(np.ones(3))
    with pytest.raises(ValueError, match="jaxlsq.factorize: a has shape \\(0, 3\\)"):
        jaxlsq.factorize(np.ones((0, 3)))
    f = jaxlsq.factorize(np.eye(3))
    with pytest.raises(ValueError, match="jaxlsq.Factorization.solve: b has 2 rows but a has 3"):
        f.solve(np.ones(2))
    with pytest.raises(TypeError, match="Factorization.solve: b is complex"):
        f.solve(np.ones(3) * 1j)
    with pytest.raises(ValueError, match=r"Factorization.solve_adjoint: c has 4 rows but a\^H"):
        f.solve_adjoint(np.ones(4))
    wide = jaxlsq.factorize(np.ones((2, 5)))  # c has a's column count: the rows of a^H
    with pytest.raises(ValueError, match=r"a\^H has shape \(5, 2\), c has shape \(2,\)"):
        wide.solve_adjoint(np.ones(2))
    with pytest.raises(TypeError, match="Factorization.solve_adjoint: c is complex"):
        f.solve_adjoint(np.ones(3) * 1j)
    bad = jaxlsq.factorize(np.array([[1.0, np.nan], [0.0, 1.0]]))
    assert np.all(np.isnan(bad.solve(np.ones(2)))) and int(bad.rank) == 0
    assert np.all(np.isnan(bad.singular_values))
    assert np.all(np.isnan(f.solve(np.array([1.0, np.inf, 1.0]))))


def test_option_errors_and_a_traced_non_finite_rcond():
    f = jaxlsq.factorize(np.ones((3, 4, 2)) + np.eye(4, 2))
    with pytest.raises(ValueError, match="jaxlsq.Factorization.solve: l2_regularizer has shape"):
        f.solve(np.ones((3, 4, 1)), l2_regularizer=np.ones(4))
    with pytest.raises(TypeError, match="jaxlsq.Factorization.solve: l2_regularizer must be an"):
        f.solve(np.ones((3, 4, 1)), l2_regularizer=[[1.0, 2.0], [3.0]])  # ragged
    with pytest.raises(ValueError, match="jaxlsq.factorize: rcond must be finite"):
        jaxlsq.factorize(np.eye(3), rcond=np.nan)
    a = np.diag([1.0, 0.5, 1e-3])
    x, rank = jax.jit(lambda r: (lambda f: (f.solve(np.ones(3)), f.rank))(jaxlsq.factorize(a, r)))(
        jnp.nan
    )
    assert np.all(np.isnan(x)) and int(rank) == 0


def test_stacked_by_vmap_and_used_outside_and_the_other_way():
    rng = np.random.default_rng(4)
    a = randn(rng, (4, 5, 3))
    a[1, :, 2] = a[1, :, 0]
    b = randn(rng, (4, 5))
    stacked = jax.vmap(jaxlsq.factorize)(a)  # rcond stacked per problem
    want = jaxlsq.lstsq(a, b[..., None])
    np.testing.assert_array_equal(stacked.rank, want.rank)
    assert_close(stacked.solve(b[..., None]), want.x, 1e-12)
    batched = jaxlsq.factorize(a)  # one factorization of the batch, mapped over
    assert_close(jax.vmap(lambda f, b: f.solve(b))(batched, b), want.x[..., 0], 1e-12)
    per_problem = jax.vmap(lambda a: jaxlsq.factorize(a, rcond=0.5))(a)
    assert list(per_problem.rank) == list(jaxlsq.lstsq(a, b[..., None], rcond=0.5).rank)
