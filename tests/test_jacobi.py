"""Singular values by one-sided Jacobi sweeps over a whole batch (jaxlsq/_jacobi.py), which the
plain solve takes for a batch of at least JACOBI_BATCH real factors R of order up to
JACOBI_ORDER on CPU (jaxlsq._full_rank._values_alone). Checked against NumPy's SVD in float64:
the values of hard factors (repeated, clustered, zero, graded over many orders of magnitude,
scaled to the ends of the range) to high relative accuracy, their independence of the batch
around them, non-finite factors, and the solve's outputs on such a batch (with rank-deficient
members, tall and wide), with no LAPACK SVD left in the program.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    assert_close,
    assert_same_to_rounding,
    compiled,
    count_svds,
    run_with_xla_defaults,
    shard_map,
)
from scipy.linalg import lapack

import jaxlsq
from jaxlsq import _full_rank
from jaxlsq._full_rank import JACOBI_BATCH, JACOBI_ORDER
from jaxlsq._jacobi import MAX_SWEEPS, _descending, jacobi_values, values_and_sweeps

DTYPES = [np.float32, np.float64]


def hard_factors(rng, n: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Upper triangular factors R = qr(G D) of order n, G Gaussian (well-conditioned columns) and
    D a diagonal scaling, and the condition number of each R D^-1 (Demmel and Veselic: the
    values of B D are found to a relative accuracy of about eps cond(B)): D spreads the columns
    down to 100 sqrt(tiny / eps) (the sweeps' limit for relative accuracy), clusters them,
    repeats them or zeroes some."""
    info = np.finfo(dtype)
    least = 100 * np.sqrt(info.tiny / info.eps)
    spreads = [
        np.ones(n),
        np.geomspace(1, least, n),  # graded over about half the exponent range
        np.where(np.arange(n) % 2, 1.0, 1 + 1e-3 * np.arange(n)),  # clustered pairs
        np.where(np.arange(n) < n // 2, 1.0, 0.0),  # exact zeros: zero columns
    ]
    g = rng.standard_normal((len(spreads), 4 * n, n))
    rs = np.linalg.qr(g * np.stack(spreads)[:, None, :], mode="r")
    conds = np.linalg.cond(np.linalg.qr(g, mode="r"))
    return rs, conds


def accurate_values(rs: np.ndarray) -> np.ndarray:
    """The singular values of each float64 matrix of rs (k, n, n), descending, by LAPACK's
    preconditioned Jacobi SVD (dgejsv, JOBA = 'C': high relative accuracy for column-scaled
    matrices), which gesdd does not promise."""
    values = []
    for r in rs:
        sva, _, _, work, _, info = lapack.dgejsv(r, joba=0, jobu=3, jobv=3)
        assert info == 0
        values.append(np.sort(sva * (work[0] / work[1]))[::-1])
    return np.array(values)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 5, JACOBI_ORDER])
def test_values_to_high_relative_accuracy(n, dtype):
    """Every value of each hard factor (in one batch, with leading dimensions) within a relative
    8 n eps cond(B) of LAPACK's Jacobi SVD in float64, zeros exactly zero; also scaled to both
    ends of the exponent range (the squared column norms would overflow or underflow unscaled),
    with no entry subnormal (XLA would flush it)."""
    rng = np.random.default_rng(n)
    rs, conds = hard_factors(rng, n, dtype)
    info = np.finfo(dtype)
    rs = np.concatenate([rs, rs[:1] * (info.max / 16), rs[:1] * (info.tiny * 2.0**40)])
    conds = np.concatenate([conds, conds[:1], conds[:1]])
    rs_typed = rs.astype(dtype)
    assert np.all((rs_typed == 0) | (np.abs(rs_typed) >= info.tiny))
    want = accurate_values(rs_typed.astype(np.float64))
    got = np.asarray(jax.jit(jacobi_values)(jnp.asarray(rs_typed).reshape(-1, 1, n, n)))
    got = got.reshape(want.shape).astype(np.float64)
    assert np.all(np.diff(got, axis=-1) <= 0)  # descending
    bound = 8 * n * info.eps * conds[:, None]
    zero = want == 0
    assert np.all(got[zero] == 0)
    assert np.all(np.abs(got - want)[~zero] <= (bound * want)[~zero])


@pytest.mark.parametrize("dtype", DTYPES)
def test_columns_beyond_the_normal_range_stop_the_sweeps(dtype):
    """A column whose squared norm flushes to zero (below sqrt(tiny) of the largest entry) left
    its inner product with the other column above the cutoff, and the sweeps ran to their cap
    (MAX_SWEEPS). Now such pairs keep no sweep going: a few sweeps, and the values within gesdd's
    absolute accuracy (a few eps of the largest)."""
    small = {np.float32: 1e-21, np.float64: 1e-159}[dtype]
    r = np.array([[-1.49, 0.4 * small], [0.9, -2.3 * small]])
    rs = np.stack([r, np.triu(r), r.T, np.diag([1.0, small])]).astype(dtype)
    values, count = jax.jit(values_and_sweeps)(jnp.asarray(rs))
    assert int(count) <= 3 < MAX_SWEEPS
    want = np.linalg.svd(rs.astype(np.float64), compute_uv=False)
    error = np.abs(np.asarray(values, np.float64) - want)
    assert np.all(error <= 4 * np.finfo(dtype).eps * want[:, :1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_problems_values_do_not_depend_on_its_batch(dtype):
    """A problem that converges early is left exactly as it is by the sweeps its batch still takes:
    its values are the same bits alone (a batch of itself) and beside problems that need more
    sweeps."""
    rng = np.random.default_rng(1)
    n = JACOBI_ORDER
    easy = np.diag(np.arange(n, 0, -1.0))  # orthogonal columns: no rotation at all
    easy[0, 1] = 1e-3  # one rotation, then converged
    slow = np.linalg.qr(rng.standard_normal((64, 4 * n, n)), mode="r")
    values = jax.jit(jacobi_values)
    alone = np.asarray(values(jnp.asarray(np.stack([easy] * 64).astype(dtype))))
    mixed = np.asarray(values(jnp.asarray(np.concatenate([[easy], slow]).astype(dtype))))
    assert np.array_equal(mixed[0], alone[0])
    assert_close(mixed[0], np.linalg.svd(easy, compute_uv=False), 8 * n * np.finfo(dtype).eps)


@pytest.mark.parametrize("n", [3, 4])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_factors_give_non_finite_values(bad, n):
    """A NaN or an infinity in a factor leaves none of its values finite (the padded column of an
    odd order included), never finite and wrong, and stops the sweeps; the others are NumPy's."""
    r = np.triu(np.random.default_rng(2).standard_normal((3, n, n))) + 2 * np.eye(n)
    r[1, 0, 2] = bad
    values, count = values_and_sweeps(jnp.asarray(r))
    got = np.asarray(values)
    assert not np.any(np.isfinite(got[1]))
    assert int(count) < MAX_SWEEPS
    assert_close(got[[0, 2]], np.linalg.svd(r[[0, 2]], compute_uv=False), 1e-14)


@pytest.mark.parametrize("n", [2, 4, 6, 8])
def test_the_values_are_sorted_as_jnp_sort_would(n):
    """_descending against -jnp.sort(-x, axis=0), bit for bit (the same values in the same
    places, signs of zero included): columns with ties, NaN (last, as jnp.sort puts it), +-inf
    and -0.0, in both dtypes."""
    rng = np.random.default_rng(n)
    for dtype in DTYPES:
        x = rng.standard_normal((n, 400)).astype(dtype)
        x[:, :100] = np.round(x[:, :100])  # ties
        x[rng.random(x.shape) < 0.15] = np.nan
        x[0, 100], x[-1, 101], x[n // 2, 102], x[:, 103] = np.inf, -np.inf, -0.0, np.nan
        want = np.asarray(-jnp.sort(-jnp.asarray(x), axis=0))
        got = np.asarray(jax.jit(_descending)(jnp.asarray(x)))
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


CHUNKED_AND_WHOLE = """
import jax, numpy as np
from jaxlsq import _full_rank
from jaxlsq._full_rank import JACOBI_BATCH, JACOBI_ORDER
from jaxlsq._jacobi import jacobi_values

jax.config.update("jax_enable_x64", True)
_full_rank._chunks_apply = lambda: True
_full_rank.CHUNK_BYTES = 1
rng = np.random.default_rng(5)
r = np.triu(rng.standard_normal((2 * JACOBI_BATCH, JACOBI_ORDER, JACOBI_ORDER)))
chunked = jax.jit(_full_rank._values)
loops = chunked.lower(r).compile().as_text().count(" while(")  # the chunks are taken here too
differ = np.sum(np.asarray(chunked(r)) != np.asarray(jax.jit(jacobi_values)(r)))
print(loops, differ)
"""


def test_which_factors_take_the_sweeps(monkeypatch, request):
    """The sweeps for at least JACOBI_BATCH real factors of order 1 to JACOBI_ORDER, gesdd for the
    rest (a smaller batch, a larger order, complex factors, order 0); and through the chunks of
    a large batch (_in_chunks vmaps each chunk's problems, which join through _values_alone's
    rule): the same values, bit for bit, as the sweeps over the whole batch. The bits are
    compared in a fresh process with XLA's default code generation: conftest.py's (without the
    fusion emitters) rounds 4 of these 16,384 values differently in the two programs, by one
    unit in the last place."""
    values = _full_rank._values
    for shape, dtype, swept in [
        ((JACOBI_BATCH, JACOBI_ORDER, JACOBI_ORDER), np.float64, True),
        ((JACOBI_BATCH, 1, 1), np.float32, True),
        ((JACOBI_BATCH - 1, JACOBI_ORDER, JACOBI_ORDER), np.float64, False),
        ((JACOBI_BATCH, JACOBI_ORDER + 1, JACOBI_ORDER + 1), np.float64, False),
        ((JACOBI_BATCH, JACOBI_ORDER, JACOBI_ORDER), np.complex128, False),
    ]:
        r = jnp.zeros(shape, dtype)
        assert count_svds(values, r, values_only=True) == (0 if swept else 1), (shape, dtype)
    rng = np.random.default_rng(5)
    r = np.triu(rng.standard_normal((2 * JACOBI_BATCH, JACOBI_ORDER, JACOBI_ORDER)))
    monkeypatch.setattr(_full_rank, "_chunks_apply", lambda: True)  # the tests simulate 8 devices
    monkeypatch.setattr(_full_rank, "CHUNK_BYTES", 1)  # chunks of the least size, JACOBI_BATCH
    jax.clear_caches()
    request.addfinalizer(jax.clear_caches)  # no program traced with these constants stays
    # the chunks', the sweeps' and the sort's (_descending)
    assert compiled(values, r).as_text().count(" while(") == 3
    assert run_with_xla_defaults(CHUNKED_AND_WHOLE, timeout=240) == ["3", "0"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["tall", "wide"])
def test_a_large_batch_of_small_problems_takes_its_values_from_the_sweeps(kind, dtype):
    """lstsq on JACOBI_BATCH problems of order JACOBI_ORDER, every tenth rank-deficient (the
    mixed branch), as leading dimensions and under vmap: NumPy's rank, x, residuals and singular
    values for each problem (against its own scale), and no LAPACK SVD without vectors in the
    program (one with vectors, for the deficient problems), where a small batch keeps gesdd's."""
    rng = np.random.default_rng(3)
    n, m = JACOBI_ORDER, 4 * JACOBI_ORDER
    a = rng.standard_normal((JACOBI_BATCH, m, n)) * np.geomspace(1, 0.1, n)
    a[::10, :, -1] = a[::10, :, 0]  # rank n - 1
    b = rng.standard_normal((JACOBI_BATCH, m))
    if kind == "wide":
        a, b = np.swapaxes(a, -1, -2), b[:, :n]
    a, b = a.astype(dtype), b.astype(dtype)
    eps = np.finfo(dtype).eps
    answers = [
        np.linalg.lstsq(p.astype(np.float64), q.astype(np.float64), rcond=None)
        for p, q in zip(a, b)
    ]
    want_x, want_s = (np.array([answer[i] for answer in answers]) for i in (0, 3))
    want_rank = np.array([answer[2] for answer in answers])
    full = want_rank == n
    assert np.sum(~full) == JACOBI_BATCH // 10 + 1
    leading = jax.jit(lambda a, b: jaxlsq.lstsq(a, b[..., None]))  # b's columns: (..., M, 1)
    for solve in (leading, jax.jit(jax.vmap(jaxlsq.lstsq))):
        result = solve(a, b)
        np.testing.assert_array_equal(result.rank, want_rank)
        assert_same_to_rounding(result.singular_values, want_s, 50 * eps)
        assert_same_to_rounding(result.x.reshape(want_x.shape), want_x, 1e4 * eps)
        if kind == "tall":  # NumPy gives residuals only at full rank
            got = np.asarray(result.residuals)[full, 0]
            want = np.array([answer[1][0] for answer in answers if answer[2] == n])
            scale = np.sum(b[full].astype(np.float64) ** 2, axis=-1)
            assert np.all(np.abs(got - want) <= 1e3 * eps * scale)
        assert count_svds(solve, a, b, values_only=True) == 0
        assert count_svds(solve, a, b) == 1
    assert count_svds(leading, a[:8], b[:8], values_only=True) > 0


@pytest.mark.parametrize("specs", ["a replicated", "b replicated", "both sharded", "jit sharded"])
def test_the_sweeps_over_a_sharded_batch(specs):
    """JACOBI_BATCH problems on each of two devices, inside shard_map (the sweeps' loop flag is
    typed to vary as the factors do; it failed to trace before) with a and b each sharded or
    replicated, and under jit with the batch sharded: every output as each half's unsharded
    solve gives it, and the singular values NumPy's."""
    rng = np.random.default_rng(4)
    half, m, n = JACOBI_BATCH, 4 * JACOBI_ORDER, JACOBI_ORDER
    a = rng.standard_normal((2 * half, m, n))
    b = rng.standard_normal((2 * half, m, 1))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("p",))
    p, whole = jax.sharding.PartitionSpec("p"), jax.sharding.PartitionSpec()
    in_specs = {"a replicated": (whole, p), "b replicated": (p, whole)}.get(specs, (p, p))
    args = tuple(x if spec == p else x[:half] for x, spec in zip((a, b), in_specs))

    def outputs(a, b):
        return tuple(jaxlsq.lstsq(a, b))

    if specs == "jit sharded":
        sharded = jax.device_put(args, jax.sharding.NamedSharding(mesh, p))
        got = jax.jit(outputs)(*sharded)
    else:
        got = jax.jit(shard_map(outputs, mesh=mesh, in_specs=in_specs, out_specs=(p,) * 4))(*args)

    def half_of(i):  # the unsharded solve of the i-th half
        return jax.jit(outputs)(*(x if x.shape[0] == half else x[i * half :][:half] for x in args))

    for g, w in zip(got, map(np.concatenate, zip(half_of(0), half_of(1)))):
        assert_same_to_rounding(g, w)
    each = args[0] if args[0].shape[0] == 2 * half else np.concatenate([args[0]] * 2)
    assert_same_to_rounding(got[3], np.linalg.svd(each, compute_uv=False), 1e-13)  # NumPy's
    assert count_svds(outputs, a[:half], b[:half], values_only=True) == 0  # the halves sweep too
