"""The full-rank shortcut of the plain solve (jaxlsq/_full_rank.py): tall, wide, square and
near-square matrices.

Where the cutoff keeps every singular value of the QR's triangular factor, x comes from a
triangular solve instead of the SVD vectors; otherwise from the SVD. A batch (leading dimensions
or vmap) takes one branch for all its problems. Checked here: the branch follows NumPy's cutoff
inside one compiled program, batches with and without deficient members give NumPy's answer for
each member, and the derivatives through the shortcut's factor pair (I, R^{-1}), first and
second order, against jnp.linalg.pinv's own rule (which never takes the shortcut) and finite
differences, all in float64; a batch factored in chunks gives NumPy's answers and the whole
batch's, to rounding (bit for bit on jaxlib 0.10.2).
"""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    assert_close,
    assert_same_to_rounding,
    compiled,
    count_svds,
    gather_few,
    loops_calling_svd,
    orthonormal,
    pinv_solve,
    randn,
    shard_map,
    with_singular_values,
)
from jax.test_util import check_grads

import jaxlsq
from jaxlsq import _full_rank, _svd_solve
from jaxlsq._full_rank import (
    UNROLLED_BATCH,
    UNROLLED_ORDER,
    _certainly_full,
    _everyone,
    _triangular_solve,
)

# tall and wide through the QR of a or a^H; square (M = N, a's QR) and near-square too
SHAPES = {"tall": (30, 6), "wide": (6, 30), "square": (6, 6), "near-wide": (6, 9)}
SPREAD = [1.0, 0.5, 1e-1, 1e-2, 1e-3, 1e-4]  # cut by rcond between two of them


def numpy_answer(a, b, rcond):
    x, _, rank, s = np.linalg.lstsq(a, b, rcond=rcond)
    return x, rank, s


def assert_like_numpy(result, a, b, rcond, tol=1e-10):
    x, rank, s = numpy_answer(a, b, rcond)
    assert int(result.rank) == rank
    assert_close(result.singular_values, s, tol)
    assert_close(result.x, x, tol)
    residuals = np.sum(np.abs(b - a @ x) ** 2, axis=0)
    assert_close(result.residuals, residuals, tol, atol_scale=np.sum(np.abs(b) ** 2))


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("kind", SHAPES)
def test_the_cutoff_picks_the_branch_like_numpy(kind, complex_):
    """One compiled program (rcond traced) gives NumPy's rank and x on both sides of the cutoff,
    for a zero matrix, and through a zero column or row."""
    rng = np.random.default_rng(0)
    m, n = SHAPES[kind]
    a = with_singular_values(rng, m, n, SPREAD, complex_)
    b = randn(rng, (m, 2), complex_)
    solve = jax.jit(jaxlsq.lstsq)
    for rcond in (0.9e-4, 1.1e-4, 0.9e-3, 1.1e-3, 0.3, -1.0):  # -1: LAPACK's eps / 2
        assert_like_numpy(solve(a, b, rcond), a, b, rcond)
    zero_line = a.copy()
    if m >= n:
        zero_line[:, 2] = 0
    else:
        zero_line[2] = 0
    for matrix in (zero_line, 0 * a):
        assert_like_numpy(solve(matrix, b, 1e-12), matrix, b, 1e-12)
    assert int(solve(a, b, 1e-12).rank) == 6 and int(solve(zero_line, b, 1e-12).rank) == 5


@pytest.mark.parametrize("kind", SHAPES)
def test_float32_keeps_numpy_semantics(kind):
    rng = np.random.default_rng(1)
    m, n = SHAPES[kind]
    for s in ([1, 0.8, 0.5, 0.3, 0.2, 0.1], [1, 0.8, 0.5, 0.3, 0.2, 1e-9]):
        a = with_singular_values(rng, m, n, s).astype(np.float32)
        b = randn(rng, (m, 1)).astype(np.float32)
        result = jax.jit(jaxlsq.lstsq)(a, b)
        x, rank, sv = numpy_answer(
            a.astype(float), b.astype(float), np.finfo(np.float32).eps * max(m, n)
        )
        assert int(result.rank) == rank
        assert_close(result.singular_values, sv, 1e-5)
        assert_close(result.x, x, 1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_full_rank_certificate_is_sound_and_used(dtype):
    """_certainly_full (the test that skips the singular values) never claims full rank where
    NumPy's cutoff drops a value, also where R^{-1} is inaccurate (float32, cond up to 1e9, tiny
    rcond), and it does hold for well-conditioned matrices at the default cutoff."""
    rng = np.random.default_rng(4)
    eps = np.finfo(dtype).eps
    claims = []
    for kind, (m, n) in SHAPES.items():
        for smallest in np.logspace(-9, 0, 28):
            a = with_singular_values(rng, m, n, [1, 0.9, 0.7, 0.5, 0.3, smallest]).astype(dtype)
            tall = a if m >= n else a.conj().T
            r = np.linalg.qr(tall.astype(np.float64), mode="r")
            for rcond in (0.0, 1e-12, eps * max(m, n), 1e-4, 0.1, 0.5):
                claim = bool(_certainly_full(*_factor_and_inverse(tall), jnp.asarray(rcond, dtype)))
                s = np.linalg.svd(r, compute_uv=False)
                claims.append(claim)
                if claim:  # NumPy keeps every value, with room to spare
                    assert s[-1] > 2 * rcond * s[0], (kind, smallest, rcond, s)
    assert 0 < sum(claims) < len(claims)
    well = randn(rng, (30, 6)).astype(dtype)
    assert bool(_certainly_full(*_factor_and_inverse(well), jnp.asarray(eps * 30, dtype)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("magnitude", ["tiny", "unit", "huge"])
def test_the_certificate_takes_a_bound_on_the_entries_of_r(dtype, magnitude):
    """pinv_solve hands _certainly_full a bound on R's entries from a's largest, sqrt(M N)
    max |a_ij|, in place of R's own largest: it claims full rank for the same matrices, also near
    the ends of the range that the solve leaves unscaled (1e-30 and 1e30 in float32, 1e-290 and
    1e290 in float64), where the squares of R's or R^{-1}'s entries leave the normal range; and
    where it claims full rank, NumPy's float64 values keep every value with room to spare."""
    rng = np.random.default_rng(5)
    eps, big = np.finfo(dtype).eps, {np.float32: 1e30, np.float64: 1e290}[dtype]
    factor = {"tiny": 1 / big, "unit": 1.0, "huge": big}[magnitude]
    claims = []
    for kind, (m, n) in SHAPES.items():
        for smallest in np.logspace(-9, 0, 10):
            a = with_singular_values(rng, m, n, [1, 0.9, 0.7, 0.5, 0.3, smallest]) * factor
            tall = jnp.asarray(a if m >= n else a.conj().T, dtype)
            r, r_inv = _factor_and_inverse(tall)
            r_big = np.sqrt(m * n) * jnp.max(jnp.abs(tall))
            s = np.linalg.svd(np.asarray(tall, np.float64), compute_uv=False)
            for rcond in (1e-12, eps * max(m, n), 1e-4, 0.1):
                claim = bool(_certainly_full(r, r_inv, jnp.asarray(rcond, dtype), r_big))
                same = bool(_certainly_full(r, r_inv, jnp.asarray(rcond, dtype)))
                assert claim == same, (kind, smallest, rcond)
                if claim:  # NumPy keeps every value, with room to spare
                    assert s[-1] > 2 * rcond * s[0], (kind, smallest, rcond, s)
                claims.append(claim)
    assert 0 < sum(claims) < len(claims)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_certificate_at_the_top_of_the_range(dtype):
    """R with entries just below the largest finite number (its own largest entry as the bound,
    the default): the scaling 2^-e must stay a normal number there, or R 2^-e flushes to zero and
    the bound claims full rank for any R. Checked against the values, which are R's diagonal."""
    top = np.finfo(dtype).max
    for big in (top / 2, top / 100):
        for ratio, full in ((1e-8, False), (0.5, True)):
            values = np.array([big, big * ratio], dtype)
            r, r_inv = jnp.asarray(np.diag(values)), jnp.asarray(np.diag(1 / values))
            claim = bool(_certainly_full(r, r_inv, jnp.asarray(1e-6, dtype)))
            assert claim == full, (big, ratio)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("form", ["single", "vmap", "leading"])
@pytest.mark.parametrize("kind", ["square", "tall", "wide"])
def test_the_certificate_holds_where_r_inverse_passes_one_over_tiny(dtype, form, kind):
    """A value at 1e-38 (float32) or 1e-308 (float64) of a matrix with entries near 1, far under
    the cutoff: R^{-1} has entries between 1 / tiny and the largest float, where a norm that
    multiplies by 1 / max |x| (subnormal, flushed to zero by XLA) came out 0 and the bound
    certified full rank (rank 2 and x near 1e38 where NumPy's rank is 1 and x about 0.01). The
    leading batch of UNROLLED_BATCH problems, half of them well-conditioned, takes the unrolled
    triangular solves and the mixed branch."""
    t = {np.float32: 1e-37, np.float64: 1e-307}[dtype]

    def shaped(tall):  # 3 x 2, the square's 2 x 2 or the wide 2 x 3
        tall = np.array(tall)[: 2 if kind == "square" else 3]
        return (tall.T if kind == "wide" else tall).astype(dtype)

    a = shaped([[1.0, 10.0], [0.0, t], [0.0, 0.0]])
    b = np.linspace(1.0, 2.0, a.shape[0]).astype(dtype)
    rcond = np.finfo(dtype).eps * max(a.shape)
    tall = a if kind != "wide" else a.T
    assert not bool(_certainly_full(*_factor_and_inverse(tall), jnp.asarray(rcond, dtype)))
    x, _, rank, s = np.linalg.lstsq(a.astype(np.float64), b.astype(np.float64), rcond=rcond)
    assert rank == 1
    if form == "single":
        result = jax.jit(jaxlsq.lstsq)(a, b)
    else:
        if form == "vmap":
            result = jax.jit(jax.vmap(jaxlsq.lstsq))(a[None], b[None])
        else:
            batch = np.stack(
                [a, shaped([[2.0, 1.0], [1.0, 3.0], [1.0, 1.0]])] * (UNROLLED_BATCH // 2)
            )
            result = jax.jit(jaxlsq.lstsq)(batch, np.stack([b[:, None]] * UNROLLED_BATCH))
            result = result._replace(x=result.x[..., 0])
        result = jaxlsq.LstsqResult(*(out[0] for out in result))
    tol = 50 * np.finfo(dtype).eps
    assert int(result.rank) == 1
    assert_close(result.x, x, tol)
    assert_close(result.singular_values[:1], s[:1], tol)


@pytest.mark.parametrize("form", ["few", "many", "vmap"])
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("adjoint_r", [False, True], ids=["R", "R^H"])
@pytest.mark.parametrize("n", [1, 3, UNROLLED_ORDER, UNROLLED_ORDER + 1])
def test_triangular_solves_unrolled_or_by_lapack_match_numpy(n, adjoint_r, complex_, form):
    """R^{-1} y and R^{-H} y against NumPy's general solve in float64, for a batch of R and one y
    (batch dimensions broadcast): by LAPACK's trsm for a few problems or order above
    UNROLLED_ORDER, unrolled for UNROLLED_BATCH problems, as leading dimensions or vmapped. A zero
    on R's diagonal makes every entry that depends on it non-finite, never finite and wrong; the
    rows that do not depend on it are NumPy's."""
    rng = np.random.default_rng(n)
    batch = 6 if form == "few" else UNROLLED_BATCH
    r = np.triu(randn(rng, (batch, n, n), complex_)) + 3 * np.eye(n)
    p = n // 2
    r[1, p, p] = 0
    y = randn(rng, (n, 4), complex_)
    if form == "vmap":
        solve = jax.vmap(lambda r: _triangular_solve(r, jnp.asarray(y), adjoint_r))
    else:
        solve = lambda r: _triangular_solve(r.reshape(-1, 2, n, n), jnp.asarray(y), adjoint_r)  # noqa: E731
    got = np.asarray(solve(jnp.asarray(r))).reshape(batch, n, 4)
    lhs = np.conj(np.swapaxes(r, -1, -2)) if adjoint_r else r
    keep = np.arange(batch) != 1
    assert_close(
        got[keep], np.linalg.solve(lhs[keep], np.broadcast_to(y, (batch - 1, n, 4))), 1e-13
    )
    # Back substitution (R) reaches rows p and above through the zero, forward (R^H) p and below.
    dependent, free = (range(p, n), range(p)) if adjoint_r else (range(p + 1), range(p + 1, n))
    assert not np.any(np.isfinite(got[1, dependent]))
    if free:
        block = np.ix_(free, free)
        assert_close(got[1, free], np.linalg.solve(lhs[1][block], y[free]), 1e-13)
    lapack = "trsm" in compiled(solve, jnp.asarray(r)).as_text()
    assert lapack == (form == "few" or n > UNROLLED_ORDER)


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("adjoint_r", [False, True], ids=["R", "R^H"])
def test_triangular_solve_vmapped_over_y_alone_keeps_one_r(adjoint_r, complex_):
    """vmap over right-hand sides with one R folds them into the columns of one LAPACK solve (as
    JAX's own rule for triangular_solve does): R is neither copied per mapped y nor unrolled,
    however many y are mapped."""
    n = UNROLLED_ORDER
    rng = np.random.default_rng(1)
    r = np.triu(randn(rng, (n, n), complex_)) + 3 * np.eye(n)
    ys = randn(rng, (UNROLLED_BATCH, n, 2), complex_)
    solve = jax.vmap(lambda y: _triangular_solve(jnp.asarray(r), y, adjoint_r))
    lhs = r.conj().T if adjoint_r else r
    assert_close(solve(jnp.asarray(ys)), np.linalg.solve(lhs, ys), 1e-13)
    text = compiled(solve, jnp.asarray(ys)).as_text()
    assert "trsm" in text
    assert f"[{UNROLLED_BATCH},{n},{n}]" not in text  # no copy of R per mapped y


def _factor_and_inverse(tall):
    r = jnp.linalg.qr(jnp.asarray(tall), mode="r")
    eye = jnp.broadcast_to(jnp.eye(r.shape[-1], dtype=r.dtype), r.shape)
    return r, jax.lax.linalg.triangular_solve(r, eye, left_side=True, lower=False)


def members(rng, m, n, which):
    """A batch of 4: all full rank (one of them scaled by 1e3), with a rank-deficient and a
    zero member among them ("mixed"), or with no full-rank member ("none")."""
    full = [randn(rng, (m, n)) for _ in range(3)] + [1e3 * randn(rng, (m, n))]
    if which == "full":
        return np.stack(full)
    deficient = with_singular_values(rng, m, n, SPREAD[:5] + [0.0])
    if which == "none":
        lower = with_singular_values(rng, m, n, SPREAD[:3] + [0.0, 0.0, 0.0])
        return np.stack([deficient, np.zeros((m, n)), lower, 1e3 * deficient])
    return np.stack([full[0], deficient, np.zeros((m, n)), full[3]])


@pytest.mark.parametrize("which", ["full", "mixed", "none"])
@pytest.mark.parametrize("form", ["leading", "vmap"])
@pytest.mark.parametrize("kind", SHAPES)
def test_a_batch_gives_numpy_for_every_member(kind, form, which):
    """Leading dimensions and vmap, with rcond traced: NumPy's rank, singular values, x and
    residuals for each member, whether the batch takes the shortcut (all full rank) or the mixed
    branch (the shortcut for the members the bound settles, the SVD for a deficient, a zero or a
    badly conditioned member, or for all of them)."""
    rng = np.random.default_rng(2)
    m, n = SHAPES[kind]
    a, b = members(rng, m, n, which), randn(rng, (4, m, 2))
    if form == "vmap":
        solve = jax.jit(jax.vmap(jaxlsq.lstsq, in_axes=(0, 0, None)))
    else:
        solve = jax.jit(jaxlsq.lstsq)
    for rcond in (1e-8, 1e-12):
        result = solve(a, b, rcond)
        for i in range(4):
            member = jaxlsq.LstsqResult(*(out[i] for out in result))
            assert_like_numpy(member, a[i], b[i], rcond)


@pytest.mark.parametrize("kind", SHAPES)
def test_the_batch_decision_covers_every_member(kind):
    """The bound holds for a batch of well-conditioned problems and fails once one member is
    deficient; _everyone reduces over leading dimensions and over vmapped problems alike."""
    rng = np.random.default_rng(7)
    m, n = SHAPES[kind]

    def certain(a, rcond):
        tall = a if m >= n else jnp.conj(jnp.swapaxes(a, -1, -2))
        return _certainly_full(*_factor_and_inverse(tall), jnp.asarray(rcond))

    rcond = np.finfo(np.float64).eps * max(m, n)
    full, mixed = members(rng, m, n, "full"), members(rng, m, n, "mixed")
    assert bool(_everyone(certain(full, rcond)))
    assert np.asarray(certain(mixed, rcond)).tolist() == [True, False, False, True]
    assert not bool(_everyone(certain(mixed, rcond)))
    # out_axes=None: one answer for the whole vmapped batch (vmap refuses a batched one)
    by_vmap = jax.vmap(lambda a: _everyone(certain(a, rcond)), out_axes=None)
    assert bool(by_vmap(full)) and not bool(by_vmap(mixed))


@pytest.mark.parametrize("form", ["leading", "vmap"])
@pytest.mark.parametrize("kind", SHAPES)
def test_a_batch_s_rank_needs_no_singular_values(kind, form):
    """Where the bound settles full rank, the rank comes without singular values: a program
    that uses x and the rank computes none (no values-only SVD), one that uses the singular
    values does; the ranks are NumPy's either way, for full, mixed and deficient batches."""
    rng = np.random.default_rng(5)
    m, n = SHAPES[kind]
    b = randn(rng, (4, m, 2))
    solve = jax.vmap(jaxlsq.lstsq) if form == "vmap" else jaxlsq.lstsq

    def x_and_rank(a, b):
        result = solve(a, b)
        return result.x, result.rank

    def with_values(a, b):
        result = solve(a, b)
        return result.x, result.rank, result.singular_values

    assert count_svds(x_and_rank, members(rng, m, n, "full"), b, values_only=True) == 0
    assert count_svds(with_values, members(rng, m, n, "full"), b, values_only=True) >= 1
    for which in ("full", "mixed", "none"):
        a = members(rng, m, n, which)
        _, rank = jax.jit(x_and_rank)(a, b)
        want = [numpy_answer(a_i, b_i, None)[1] for a_i, b_i in zip(a, b)]
        assert rank.tolist() == want, which


@pytest.mark.parametrize("form", ["leading", "vmap"])
@pytest.mark.parametrize("kind", SHAPES)
def test_batch_gradients_match_each_member_s_pinv_rule(kind, form):
    """jax.grad through a batch (the shortcut for all full rank, the mixed branch otherwise): each
    member's gradient equals jnp.linalg.pinv's rule's for that member alone; also grad of vmap."""
    rng = np.random.default_rng(8)
    m, n = SHAPES[kind]
    b = randn(rng, (4, m, 2))
    for which in ("full", "mixed", "none"):
        a = members(rng, m, n, which)
        solve = jax.vmap(jaxlsq.lstsq) if form == "vmap" else jaxlsq.lstsq

        def loss(a, b):
            r = solve(a, b)
            return jnp.sum(r.x**2) + jnp.sum(r.residuals)

        got = jax.jit(jax.grad(loss, argnums=(0, 1)))(a, b)
        for i in range(4):
            want = jax.grad(scalar(through_the_pinv_rule, 0.0), argnums=(0, 1))(a[i], b[i])
            for g, w in zip(got, want):
                assert_close(g[i], w, 1e-9, err_msg=f"{which} member {i}")


@pytest.mark.parametrize("which", ["full", "mixed"])
@pytest.mark.parametrize("form", ["leading", "vmap"])
def test_a_batch_factored_in_chunks(monkeypatch, request, form, which):
    """A batch whose joint QR of [a, b] passes CHUNK_BYTES is factored a chunk of problems at a
    time (lax.map), a's masking and scaling inside the loop, and so are the branch that mixes the
    shortcut with the SVD (a leading batch) and the singular values (three loops; under vmap the
    values of both branches): NumPy's answer for every member
    (full rank, deficient, zero, far outside LAPACK's range), NaN for a non-finite one, and the
    whole batch's answer and gradients to rounding (bit for bit on jaxlib 0.10.2; see
    assert_same_to_rounding)."""
    rng = np.random.default_rng(11)
    m, n = SHAPES["tall"]
    base = members(rng, m, n, which)
    a = np.concatenate([base, base * 2.0**-1000, base * 2.0**900])  # 12 problems
    a[5, 2, 3] = np.nan
    b = randn(rng, (12, m, 1))
    # three problems to a chunk (four chunks); unrolled triangular solves in both programs
    monkeypatch.setattr(_full_rank, "UNROLLED_BATCH", 2)
    # chunks apply on a single CPU device (the tests simulate several): off first, then on
    monkeypatch.setattr(_full_rank, "CHUNK_BYTES", 3 * m * (n + 1) * 8)
    jax.clear_caches()
    assert " while(" not in compiled(jaxlsq.lstsq, a, b).as_text()
    monkeypatch.setattr(_full_rank, "_chunks_apply", lambda: True)
    request.addfinalizer(jax.clear_caches)  # no program traced with these constants stays
    solve = jax.vmap(jaxlsq.lstsq) if form == "vmap" else jaxlsq.lstsq

    def loss(a, b):
        r = solve(a, b)
        return jnp.sum(r.x**2) + jnp.sum(r.residuals)

    outs = {}
    for chunk_bytes, name in ((3 * m * (n + 1) * 8, "chunks"), (1 << 40, "whole")):
        monkeypatch.setattr(_full_rank, "CHUNK_BYTES", chunk_bytes)
        jax.clear_caches()  # lstsq's programs were traced with the other CHUNK_BYTES
        loops = compiled(solve, a, b).as_text().count(" while(")
        assert loops == (3 if name == "chunks" else 0), name
        outs[name] = jax.jit(solve)(a, b), jax.jit(jax.grad(loss, argnums=(0, 1)))(a, b)
    for got, want in zip(jax.tree.leaves(outs["chunks"]), jax.tree.leaves(outs["whole"])):
        assert_same_to_rounding(got, want)
    result = outs["chunks"][0]
    for i in range(12):
        member = jaxlsq.LstsqResult(*(out[i] for out in result))
        if i == 5:
            assert np.isnan(member.x).all() and int(member.rank) == 0
            assert np.isnan(member.singular_values).all()
        else:
            assert_like_numpy(member, a[i], b[i], None)


def batch_with_unsettled(rng, m, n, unsettled):
    """24 problems, the given number of them unsettled (their bound does not settle full rank):
    a zero, a non-finite and rank-deficient matrices, spread over the batch; the others full rank
    (some scaled by 1e3)."""
    a = np.stack([randn(rng, (m, n)) * (1e3 if i % 5 == 0 else 1.0) for i in range(24)])
    spots = np.linspace(0, 23, unsettled).astype(int)
    for j, i in enumerate(spots):
        a[i] = with_singular_values(rng, m, n, SPREAD[:5] + [0.0]) if j > 1 else 0.0
    a[spots[1], 1, 2] = np.nan
    return a, spots[1]


@pytest.mark.parametrize("form", ["leading", "vmap", "columns"])
@pytest.mark.parametrize("kind", ["tall", "wide"])
def test_few_unsettled_members_alone_take_the_svd(monkeypatch, request, kind, form):
    """The mixed branch's SVD takes only the unsettled problems of a batch, gathered into rooms of
    a FEW_UNSETTLED-th of the batch, as many rounds as they fill (counted at run time); also over
    vmap, and with each problem's right-hand sides vmapped over one matrix (columns: they join
    its columns). For every count: the SVD batches that ran, NumPy's answer for every member (NaN
    for the non-finite one), and the whole batch's answers and gradients to rounding (bit for bit
    on jaxlib 0.10.2)."""
    rng = np.random.default_rng(12)
    m, n = SHAPES[kind]
    b = randn(rng, (24, m, 2))
    gather_few(monkeypatch, request)
    ran = []  # the batch size of each mixed solution that ran
    original = _full_rank._mixed_solution

    def recorded(kind, r, *args):
        size = math.prod(r.shape[:-2])
        jax.debug.callback(lambda: ran.append(size))
        return original(kind, r, *args)

    monkeypatch.setattr(_full_rank, "_mixed_solution", recorded)
    if form == "columns":  # x (24, 2, n) and the other outputs repeated per column: as lstsq's
        columns = jax.vmap(jax.vmap(jaxlsq.lstsq, in_axes=(None, 1)))

        def solve(a, b):
            r = columns(a, b)
            return jaxlsq.LstsqResult(
                jnp.swapaxes(r.x, 1, 2), r.residuals[..., 0], r.rank[:, 0], r.singular_values[:, 0]
            )
    else:
        solve = jax.vmap(jaxlsq.lstsq) if form == "vmap" else jaxlsq.lstsq

    def loss(a, b):
        r = solve(a, b)
        return jnp.sum(r.x**2) + jnp.sum(r.residuals)

    rounds = {2: 1, 3: 1, 4: 2, 5: 2, 14: 5, 24: 8}  # unsettled: rounds of rooms of 3
    batches = {u: batch_with_unsettled(rng, m, n, u) for u in rounds}
    outs = {}
    for least, name in ((8, "rooms"), (1 << 30, "whole")):
        monkeypatch.setattr(_full_rank, "FEW_UNSETTLED_WORK", least)
        jax.clear_caches()  # lstsq's programs were traced with the other constants
        # one program per route: the rounds are counted at run time, not traced per count
        solved, grads = jax.jit(solve), jax.jit(jax.grad(loss, argnums=(0, 1)))
        for unsettled, (a, _) in batches.items():
            ran.clear()
            out = jax.block_until_ready(solved(a, b))
            want_ran = [3] * rounds[unsettled] if name == "rooms" else [24]
            assert ran == want_ran, (unsettled, name, ran)
            outs[name, unsettled] = out, grads(a, b)
    for unsettled, (a, bad) in batches.items():
        rooms, whole = outs["rooms", unsettled], outs["whole", unsettled]
        for got, want in zip(jax.tree.leaves(rooms), jax.tree.leaves(whole)):
            assert_same_to_rounding(got, want, err_msg=f"{unsettled} unsettled")
        result = rooms[0]
        for i in range(24):
            member = jaxlsq.LstsqResult(*(out[i] for out in result))
            if i == bad:
                assert np.isnan(member.x).all() and int(member.rank) == 0
            else:
                assert_like_numpy(member, a[i], b[i], None)


def test_gathering_batches_differentiate_in_rcond_and_map_nothing(monkeypatch, request):
    """With the rooms in place: a cutoff that depends on a (rcond = 1e-6 max|a|, differentiated in
    a) and a derivative in rcond itself (zero: the rank is piecewise constant) trace and match
    the whole batch's route and, member by member, jnp.linalg.pinv's rule; a vmap over no right-hand sides gives empty answers; a batch on a
    one-device mesh (explicitly sharded on jax 0.10) solves as an unsharded one."""
    rng = np.random.default_rng(5)
    a, bad = batch_with_unsettled(rng, *SHAPES["tall"], 3)
    a[bad] = 0.0  # finite, so the gradients are too: a zero, a zero and a rank-deficient member
    b = randn(rng, (24, SHAPES["tall"][0], 2))

    def in_a(a, b):
        return jnp.sum(jaxlsq.lstsq(a, b, 1e-6 * jnp.max(jnp.abs(a))).x ** 2)

    def in_rcond(rcond):
        return jnp.sum(jaxlsq.lstsq(a, b, rcond).x ** 2)

    outs = {}
    for least, name in ((8, "rooms"), (1 << 30, "whole")):
        gather_few(monkeypatch, request, least)
        outs[name] = jax.grad(in_a, argnums=(0, 1))(a, b)
        assert float(jax.grad(in_rcond)(1e-6)) == 0.0
    for got, want in zip(jax.tree.leaves(outs["rooms"]), jax.tree.leaves(outs["whole"])):
        assert np.isfinite(got).all()
        assert_same_to_rounding(got, want)
    cutoff = 1e-6 * np.max(np.abs(a))  # a constant for the reference: the rank has no derivative
    for i in range(24):  # each member against jnp.linalg.pinv's own rule
        want = jax.grad(lambda a, b: jnp.sum(pinv_solve(a, b, cutoff) ** 2), argnums=(0, 1))
        for g, w in zip(outs["rooms"], want(a[i], b[i])):
            assert_close(g[i], w, 1e-9, err_msg=f"member {i}")
    gather_few(monkeypatch, request, 8)
    empty = jax.vmap(jaxlsq.lstsq, in_axes=(None, 0))(a[0], np.zeros((0, a.shape[1], 2)))
    assert [x.shape for x in empty] == [(0, 6, 2), (0, 2), (0,), (0, 6)]
    mesh = jax.make_mesh((1,), ("p",), devices=jax.devices()[:1])
    on_mesh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("p"))
    sharded = jax.jit(jaxlsq.lstsq)(jax.device_put(a, on_mesh), jax.device_put(b, on_mesh))
    for got, want in zip(sharded, jax.jit(jaxlsq.lstsq)(a, b)):
        assert_same_to_rounding(got, want)


@pytest.mark.parametrize("specs", ["a replicated", "b replicated", "both sharded"])
@pytest.mark.parametrize("kind", ["tall", "wide"])
def test_gathering_under_shard_map(monkeypatch, request, kind, specs):
    """The rooms' loop inside shard_map over a one-device mesh (where it runs: _gathers_apply),
    with a batch of a and of b each sharded or replicated: its carry is typed to vary as every
    input does. A replicated batch of wide a with a sharded b failed to trace (the carry's
    R^{-1} was typed replicated, the rounds' answers varying; found by a review). Every output
    and the gradients as the unsharded solve's, and the loop in the program."""
    gather_few(monkeypatch, request, work=8)
    rng = np.random.default_rng(6)
    m, n = SHAPES[kind]
    a, bad = batch_with_unsettled(rng, m, n, 5)
    a[bad] = 0.0  # finite: the gradients are compared too
    b = randn(rng, (24, m, 2))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("p",))
    p, whole = jax.sharding.PartitionSpec("p"), jax.sharding.PartitionSpec()
    in_specs = {"a replicated": (whole, p), "b replicated": (p, whole), "both sharded": (p, p)}

    def outputs(a, b):
        return tuple(jaxlsq.lstsq(a, b))

    def grads(a, b):
        return jax.grad(lambda a, b: jnp.sum(jaxlsq.lstsq(a, b).x ** 2), argnums=(0, 1))(a, b)

    for f, out_specs in ((outputs, (p,) * 4), (grads, (p, p))):
        if f is grads and jax.__version_info__ < (0, 7):  # see test_sharding._grad_under_shard_map
            continue
        per_shard = shard_map(f, mesh=mesh, in_specs=in_specs[specs], out_specs=out_specs)
        assert loops_calling_svd(per_shard, a, b) >= 1, f.__name__
        got, want = jax.jit(per_shard)(a, b), jax.jit(f)(a, b)
        for g, w in zip(got, want):
            assert_same_to_rounding(g, w, err_msg=f.__name__)


@pytest.mark.parametrize("mapped", [3, 4])
@pytest.mark.parametrize("k", [1, 9], ids=["K=1", "K>N"])
def test_vmap_with_b_of_fewer_batch_dimensions_than_a(k, mapped):
    """Under vmap, b with fewer batch dimensions than a broadcasts against a's trailing ones, as
    in a single call (the mapped axis lines up with the mapped axis). Until 2026-12-04 the
    mapped axis of b met a's inner one: an error with 3 mapped problems, wrong x with 4."""
    rng = np.random.default_rng(12)
    m, n = SHAPES["tall"]
    a, b = randn(rng, (mapped, 4, m, n)), randn(rng, (mapped, m, k))
    result = jax.jit(jax.vmap(jaxlsq.lstsq))(a, b)
    for i in range(mapped):
        for j in range(4):
            member = jaxlsq.LstsqResult(*(out[i, j] for out in result))
            assert_like_numpy(member, a[i, j], b[i], None)


@pytest.mark.parametrize("batch", [(), (3,)], ids=["single", "batch"])
@pytest.mark.parametrize("k", [1, 6, 9], ids=["K=1", "K=N", "K>N"])
def test_tall_right_hand_sides_with_the_joint_qr_or_ormqr(k, batch):
    """K <= N takes R and Q^H b from one QR of [a, b], K > N applies Q^H by ormqr: NumPy's x,
    rank and residuals either way, at full and lower rank, also for a b shared by a batch."""
    rng = np.random.default_rng(10)
    m, n = SHAPES["tall"]
    for s in ([1, 0.8, 0.5, 0.3, 0.2, 0.1], SPREAD[:5] + [0.0]):
        count = int(np.prod(batch))
        a = np.stack([with_singular_values(rng, m, n, s) for _ in range(count)])
        a = a.reshape(*batch, m, n)
        for b in (randn(rng, (*batch, m, k)), randn(rng, (m, k))):
            result = jax.jit(jaxlsq.lstsq)(a, b)
            for i in np.ndindex(*batch):
                member = jaxlsq.LstsqResult(*(out[i] for out in result))
                assert_like_numpy(member, a[i], np.broadcast_to(b, (*batch, m, k))[i], None)


@pytest.mark.parametrize("kind", SHAPES)
def test_vmap_over_right_hand_sides_keeps_the_shortcut(kind):
    rng = np.random.default_rng(3)
    m, n = SHAPES[kind]
    a, b = randn(rng, (m, n)), randn(rng, (m, 4))

    def by_column(a, b):
        return jax.vmap(lambda bk: jaxlsq.lstsq(a, bk).x, in_axes=1, out_axes=1)(b)

    assert "conditional" in compiled(by_column, a, b).as_text()
    assert_close(jax.jit(by_column)(a, b), np.linalg.lstsq(a, b, rcond=None)[0], 1e-12)


def full_rank_cases(rng, kind, complex_):
    m, n = SHAPES[kind]
    flip = (lambda x: x) if m >= n else (lambda x: np.conj(x.T))
    return {
        "random": randn(rng, (m, n), complex_),
        "orthonormal": flip(orthonormal(rng, max(m, n), min(m, n), complex_)),
        "repeated_values": with_singular_values(rng, m, n, [3, 3, 3, 1, 1, 0.5], complex_),
        "cond_1e3": with_singular_values(rng, m, n, [1, 0.3, 0.1, 0.03, 0.01, 1e-3], complex_),
    }


def x_and_residuals(a, b):
    x, residuals = jaxlsq.lstsq(a, b)[:2]
    return x, residuals


def by_the_pinv_rule(a, b):
    """x = A^+ b through jnp.linalg.pinv's own rule (no shortcut), default cutoff."""
    return pinv_solve(a, b, None)


def through_the_pinv_rule(a, b):
    """The same solve, x and residuals, through jnp.linalg.pinv (no shortcut)."""
    x = by_the_pinv_rule(a, b)
    return x, jnp.sum(jnp.abs(b - a @ x) ** 2, axis=0)


def scalar(solve, weights):
    def f(a, b):
        x, residuals = solve(a, b)
        return jnp.sum(jnp.abs(x) ** 2) + jnp.sum(jnp.real(weights * x)) + jnp.sum(residuals)

    return f


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("kind", SHAPES)
def test_first_order_matches_the_pinv_rule_and_finite_differences(kind, complex_):
    rng = np.random.default_rng(4)

    def gradient(solve):  # in (a, b), one program for every case
        return jax.jit(jax.grad(lambda a, b, w: scalar(solve, w)(a, b), argnums=(0, 1)))

    gradients = gradient(x_and_residuals), gradient(through_the_pinv_rule)
    for name, a in full_rank_cases(rng, kind, complex_).items():
        m, n = a.shape
        b, db = randn(rng, (m, 2), complex_), randn(rng, (m, 2), complex_)
        # scaled by the smallest singular value, so that the difference steps below stay small
        da = randn(rng, (m, n), complex_) * np.linalg.svd(a, compute_uv=False)[-1]
        weights = randn(rng, (n, 2), complex_)
        got = jax.jvp(x_and_residuals, (a, b), (da, db))
        want = jax.jvp(through_the_pinv_rule, (a, b), (da, db))
        for g, w in zip(got, want):
            assert_close(g[0], w[0], 1e-9, err_msg=name)
            assert_close(g[1], w[1], 1e-9, err_msg=name)
        h = 1e-6
        plus = x_and_residuals(a + h * da, b + h * db)[0]
        minus = x_and_residuals(a - h * da, b - h * db)[0]
        assert_close(got[1][0], (plus - minus) / (2 * h), 1e-6, err_msg=name)
        f = scalar(x_and_residuals, weights)
        grads, want_grads = (g(a, b, weights) for g in gradients)
        # JAX's gradient of a real f in complex z is df/dRe(z) - i df/dIm(z): df = Re(g dz)
        reverse = sum(np.real(np.sum(g * d)) for g, d in zip(grads, (da, db)))
        forward = jax.jvp(f, (a, b), (da, db))[1]
        assert_close(reverse, forward, 1e-10, err_msg=name)
        for g, w in zip(grads, want_grads):
            assert_close(g, w, 1e-9, err_msg=name)


def batch_of_one(a, b):
    return jaxlsq.lstsq(a[None], b[None, :, None]).x[0, :, 0]


@pytest.mark.parametrize("kind", SHAPES)
def test_hessian_matches_pinv(kind):
    rng = np.random.default_rng(5)

    def hessian(solve):  # in a, one program for every case
        return jax.jit(jax.hessian(lambda a, b: jnp.sum(solve(a, b) ** 2)))

    hessians = [
        hessian(lambda a, b: jaxlsq.lstsq(a, b).x),
        hessian(lambda a, b: jnp.linalg.pinv(a) @ b),
        hessian(batch_of_one),  # the batch's shortcut
    ]
    for name, a in full_rank_cases(rng, kind, False).items():
        m, n = a.shape
        b = randn(rng, (m,))
        got, by_pinv, as_a_batch = (h(a, b) for h in hessians)
        scale = np.abs(by_pinv).max()
        assert_close(got, by_pinv, 1e-8, atol_scale=scale, err_msg=name)
        assert_close(as_a_batch, by_pinv, 1e-8, atol_scale=scale, err_msg=name)


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_check_grads_second_order(complex_):
    """Numerical first and second derivatives of x, forward and reverse, for a near-wide a (3 x 5:
    the QR of a^H). tests/test_derivatives.py's test_check_grads_full_rank checks tall, wide and
    square ones the same way, with x, residuals and singular values."""
    rng = np.random.default_rng(6)
    a, b = randn(rng, (3, 5), complex_), randn(rng, (3, 2), complex_)
    x = jax.jit(lambda a, b: jaxlsq.lstsq(a, b).x)
    check_grads(x, (a, b), order=2, modes=("fwd", "rev"))


@pytest.mark.parametrize("form", ["leading", "vmap"])
@pytest.mark.parametrize("kind", ["tall", "wide"])
def test_the_large_form_of_the_rule_gives_the_same_derivatives(monkeypatch, request, kind, form):
    """For a large a (_svd_solve._large_form), the rule's lax.cond picks the vanishing term's
    vector instead of the term: each member's gradient is jnp.linalg.pinv's rule's, and first and
    second derivatives are the small form's, for batches with full-rank and with deficient
    members (where the cond takes either branch)."""
    rng = np.random.default_rng(33)
    m, n = SHAPES[kind]
    b = randn(rng, (4, m, 2))
    solve = jax.vmap(jaxlsq.lstsq) if form == "vmap" else jaxlsq.lstsq

    def loss(a, b):
        r = solve(a, b)
        return jnp.sum(r.x**2) + jnp.sum(r.residuals)

    request.addfinalizer(jax.clear_caches)  # no program traced with a forced form stays
    batches = {which: members(rng, m, n, which) for which in ("full", "mixed")}
    outs = {}
    for large, name in ((True, "large"), (False, "small")):
        monkeypatch.setattr(_svd_solve, "_large_form", lambda a, x, copies, large=large: large)
        jax.clear_caches()  # lstsq's programs were traced with the other form
        first, second = jax.jit(jax.grad(loss, argnums=(0, 1))), jax.jit(jax.hessian(loss))
        for which, a in batches.items():
            outs[name, which] = first(a, b), second(a, b)
    for which, a in batches.items():
        by_large, by_small = outs["large", which], outs["small", which]
        for got, want in zip(jax.tree.leaves(by_large), jax.tree.leaves(by_small)):
            assert_close(got, want, 1e-10, err_msg=which)
        for i in range(4):
            want = jax.grad(scalar(through_the_pinv_rule, 0.0), argnums=(0, 1))(a[i], b[i])
            for g, w in zip(by_large[0], want):
                assert_close(g[i], w, 1e-9, err_msg=f"{which} member {i}")


def test_vmapped_copies_counts_the_mapped_axes_a_value_is_batched_along():
    """_svd_solve.vmapped_copies: the product of the vmapped axes' sizes along which its argument
    is batched, 1 outside vmap, along an axis it is not batched on, and eagerly."""
    seen = []

    def record(x):
        seen.append(_svd_solve.vmapped_copies(x))
        return x

    x = jnp.ones((3, 5, 2))
    jax.vmap(jax.vmap(record))(x)
    jax.vmap(record, in_axes=1)(x)
    jax.vmap(lambda y: jax.vmap(lambda z: record(x[0, 0]) + z)(y))(x)  # x[0, 0] is unbatched
    jax.jit(record)(x)
    record(x)
    jax.grad(lambda x: jnp.sum(jax.vmap(record)(x)))(x)
    assert seen == [15, 5, 1, 1, 1, 3]


@pytest.mark.parametrize("kind", ["tall", "wide"])
def test_a_vmapped_batch_takes_the_large_form_as_a_leading_one_does(monkeypatch, request, kind):
    """Under vmap the rule is traced one problem at a time; lstsq counts the mapped copies of a
    (vmapped_copies) so that a large vmapped batch takes the rule's large form as the same batch
    with a leading dimension does: the form is chosen with the 10,000 copies counted, the
    program keeps at least half of a's size less than with the small form forced (10,000 64x8
    float32 problems: 30.7 MiB against 14.6 on one CPU device), and the gradients are the
    leading batch's."""
    monkeypatch.setattr(_full_rank, "_chunks_apply", lambda: True)  # the tests simulate 8 devices
    jax.clear_caches()
    request.addfinalizer(jax.clear_caches)
    m, n = (64, 8) if kind == "tall" else (8, 64)
    rng = np.random.default_rng(34)
    a = jnp.asarray(rng.standard_normal((10_000, m, n)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((10_000, m, 1)), jnp.float32)
    large_form, seen = _svd_solve._large_form, []

    def spy(a, x, copies, force=None):
        seen.append(copies)
        return large_form(a, x, copies) if force is None else force

    outs, temporaries = {}, {}
    for name, solve, force in (
        ("leading", jaxlsq.lstsq, None),
        ("vmap", jax.vmap(jaxlsq.lstsq), None),
        ("vmap, small form", jax.vmap(jaxlsq.lstsq), False),
    ):
        monkeypatch.setattr(_svd_solve, "_large_form", partial(spy, force=force))
        jax.clear_caches()  # lstsq's programs were traced with another form
        seen.clear()
        loss = lambda a, b, solve=solve: jnp.sum(solve(a, b).x ** 2)  # noqa: E731
        program = compiled(jax.value_and_grad(loss, argnums=(0, 1)), a, b)
        temporaries[name] = program.memory_analysis().temp_size_in_bytes
        outs[name] = program(a, b)
        if name == "vmap":
            assert seen and set(seen) == {10_000}, seen
    assert temporaries["vmap"] <= temporaries["vmap, small form"] - a.nbytes // 2, temporaries
    (value, grads), (want_value, want_grads) = outs["vmap"], outs["leading"]
    assert_close(value, want_value, 1e-6)
    for got, want in zip(grads, want_grads):  # float32: equal to its rounding
        assert_same_to_rounding(got, want, rtol=1e-6)


def test_a_large_batch_keeps_its_temporaries_under_mallocs_ceiling(monkeypatch, request):
    """On one CPU device the joint QR, the branch that mixes the shortcut with the SVD and the
    singular values take a large batch a chunk at a time, so that no whole-batch LAPACK buffer
    sets the program's size: 1,000 256x32 float64 problems keep under 32 MiB of temporaries
    (glibc's malloc maps a larger block afresh on every call: BENCHMARKS.md, Page faults), where
    the whole-batch SVD branch took 40.1 MiB for x and 42.0 for every output. (Under vmap that
    branch still takes the whole batch at once: 40.1 and 42.0.)"""
    if tuple(int(part) for part in jax.__version__.split(".")[:2]) < (0, 10):
        pytest.skip(
            "jax 0.6.0's XLA keeps 78 MiB of temporaries for this program with the chunks and "
            "without them (measured); the claim is for jaxlib 0.10"
        )
    monkeypatch.setattr(_full_rank, "_chunks_apply", lambda: True)  # the tests simulate 8 devices
    jax.clear_caches()
    request.addfinalizer(jax.clear_caches)
    a, b = jnp.ones((1000, 256, 32)), jnp.ones((1000, 256, 1))
    for outputs in (lambda r: r.x, tuple):
        program = compiled(lambda a, b, outputs=outputs: outputs(jaxlsq.lstsq(a, b)), a, b)
        assert program.memory_analysis().temp_size_in_bytes < 32 << 20


def _residual_problems(rng):
    """{name: (a, b)} for the routes of a tall full-rank solve's residuals, float64 unless named."""
    m, n = 30, 6
    a = with_singular_values(rng, m, n, [3, 2, 1, 0.5, 0.1, 0.01])
    one_a = with_singular_values(rng, 9, 6, [3, 2, 1, 0.5, 0.1, 0.01])
    complex_a = with_singular_values(rng, m, n, [3, 2, 1, 0.5, 0.1, 0.01], True)
    near = a @ rng.standard_normal((n, 2))  # b nearly in a's range: small residuals
    cases = [  # the joint QR of [a, b] (K <= N), or a's QR and Q^H b by ormqr (K > N, b broadcast)
        ("one column", a, rng.standard_normal((m, 1))),
        ("columns", a, rng.standard_normal((m, 4))),
        ("nearly consistent", a, near + 1e-9 * rng.standard_normal((m, 2))),
        ("rows fewer than N + K", one_a, rng.standard_normal((9, 5))),
        ("square", a[:n], rng.standard_normal((n, 2))),
        ("K > N", a, rng.standard_normal((m, n + 2))),
        ("b batched beyond a", a, rng.standard_normal((3, m, 2))),
        ("batch", np.stack([a, 2 * a, a[::-1]]), rng.standard_normal((3, m, 2))),
        ("complex", complex_a, randn(rng, (m, 2), True)),
        ("huge b", a, 1e300 * rng.standard_normal((m, 2))),
        ("tiny b", a, 1e-300 * rng.standard_normal((m, 2))),
        ("float32", a.astype(np.float32), rng.standard_normal((m, 2)).astype(np.float32)),
    ]
    assert [name for name, _, _ in cases] == RESIDUAL_CASES
    return {name: (a, b) for name, a, b in cases}


RESIDUAL_CASES = [
    "one column",
    "columns",
    "nearly consistent",
    "rows fewer than N + K",
    "square",
    "K > N",
    "b batched beyond a",
    "batch",
    "complex",
    "huge b",
    "tiny b",
    "float32",
]


@pytest.fixture
def product_residuals_nan(monkeypatch, request):
    """_full_rank's product form of the residuals made NaN: a finite answer then comes from the
    QR's route."""
    product = _full_rank._product_residuals

    def nan_product(*args):
        return jnp.full_like(product(*args), jnp.nan)

    monkeypatch.setattr(_full_rank, "_product_residuals", nan_product)
    jax.clear_caches()
    request.addfinalizer(jax.clear_caches)  # no program traced with the NaN form stays


@pytest.mark.parametrize("name", RESIDUAL_CASES)
def test_residuals_of_the_shortcut_come_from_the_qr(product_residuals_nan, name):
    """Where the shortcut solves a tall problem, the residuals are the squared norms of Q^H b's
    rows below N, without the product a x (made NaN here): NumPy's residuals (from float64 x) on
    every route to them; inf where their squares overflow."""
    a, b = _residual_problems(np.random.default_rng(21))[name]
    with np.errstate(over="ignore"):
        want = np.sum(np.abs(b - a @ np.linalg.pinv(a.astype(np.complex128)) @ b) ** 2, axis=-2)
        scale = np.sum(np.abs(b) ** 2, axis=-2)
    got = jax.jit(lambda a, b: jaxlsq.lstsq(a, b).residuals)(a, b)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want), name)
    finite = np.isfinite(want)
    error = np.abs(got - want)[finite]
    tol = 10 * max(a.shape[-2:]) * np.finfo(a.dtype).eps
    np.testing.assert_array_less(error, tol * scale[finite] + np.finfo(a.dtype).tiny, name)


def test_residuals_of_other_problems_keep_the_product(product_residuals_nan):
    """A rank-deficient tall problem (the SVD branch) and a wide one take their residuals from
    the product b - a x (NaN here), single and batched."""
    rng = np.random.default_rng(23)
    a = rng.standard_normal((2, 12, 4))
    a[1, :, -1] = a[1, :, 0]
    b = rng.standard_normal((2, 12, 3))
    residuals = jax.jit(lambda a, b: jaxlsq.lstsq(a, b).residuals)
    for a, b in [(a[1], b[1]), (a, b), (np.swapaxes(a[0], 0, 1), b[0, :4])]:
        assert np.all(np.isnan(residuals(a, b))), a.shape
