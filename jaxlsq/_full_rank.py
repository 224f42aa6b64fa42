r"""The plain solve, with a shortcut where the matrix has full rank.

Every solve starts with the Householder QR a = Q R (a^H = Q R where M < N), near-square matrices
included. Where the cutoff keeps every singular value of R (full column rank for a tall a, full
row rank for a wide one), the pseudo-inverse needs no SVD vectors:

    tall:  A^+ = R^{-1} Q^H,           x = R^{-1} Q^H b            (the QR least-squares solve)
    wide:  A^+ = Q R^{-H},             x = Q R^{-H} b              (the minimum-norm solution)

Both are backward stable, like the SVD solve. Otherwise the SVD of R (with vectors) gives
x = V S^+ U^H Q^H b as in _svd_solve. Either way rank, singular values and x are NumPy's; the two
branches differ in rounding only. A lax.cond picks the branch at run time; it holds only N x N
and N x K work (Q is applied outside it), and the derivative is taken outside it too.

The rank is decided in two steps. First a bound from R^{-1} (a triangular solve, cheaper than any
SVD): s_max <= ||R||_F and s_min >= 1 / ||R^{-1}||_F, so ||R||_F ||R^{-1}||_F rcond < 1 means
every value is kept (with a margin for the rounding of R^{-1}). Where the bound settles it, the
singular values are computed (without vectors) only for the output, and XLA drops them where the
caller does not use them. A large batch of small real factors on CPU takes them by Jacobi sweeps
over the whole batch at once (_values_alone, _jacobi), where LAPACK's gesdd would make one call per
problem. Otherwise the values alone (gesdd without vectors) decide, unless R's
diagonal already shows a dropped value (the SVD with vectors is then taken straight away).

The residuals ||b - a x||^2 of a tall problem solved by the shortcut need no product a x: Q^H b's
rows below N hold the part of b outside a's range, and their squared norms are the residuals (the
joint QR of [a, b] has them, reflected further among themselves, in its last rows; NumPy takes
them from gelsd the same way). A lax.cond on the same decision picks them, or the product for
the SVD branch (whose x may drop values, so that the least-squares residual is not x's) and for
a wide a; their derivative is the product's (_fitted_residuals).

Near-square matrices take the same route, where the SVD of a itself would cost several times the
QR: with full rank certified, a 1000 x 1000 float64 solve is a QR and triangular solves; where
only the values decide (the bound is loose by up to a factor N: float32 at N = 1000), a QR and
the values of R; and a rank-deficient one pays a QR on top of the SVD (of R instead of a).

The derivative is _svd_solve's rule through the pair (V, W) of the tall a (or of a^H when wide),
(A^H A)^+ = W W^H. At full rank (I, R^{-1}) is that pair in another gauge ((A^H A)^{-1} =
R^{-1} R^{-H}; A A^H = R^H R when wide), and R^{-1} is what the bound above needs anyway; so one
rule serves both branches, to any order, and the derivative adds no O(N^3) work to the solve. At
full rank one term of the rule vanishes (the null-space term of a tall a, the residual term of a
wide one); a lax.cond skips its O(M N K) products there.

Batches (leading dimensions or vmap) take one decision for all their problems: a branch picked
per problem would become a select that computes both. The batch takes the shortcut alone where
the bound settles full rank for every problem (_everyone reduces the flags, over vmapped problems
too). Otherwise each problem keeps its own answer: the shortcut's where its bound settles full rank,
the SVD's for the others, from one batched SVD in which the settled problems' R are replaced by
identities. LAPACK's gesdd takes about a fifth of its usual time on an identity, so a few
rank-deficient problems no longer cost the whole batch an SVD (10,000 64x8 float32 problems with one
of them rank-deficient: 98 ms where the SVD of every R took 243), and where no problem is settled
the branch costs what that SVD alone did. In a batch large enough (FEW_UNSETTLED_WORK, on a single
CPU device) the SVD takes only the unsettled problems, gathered a 32nd of the batch at a time, in
a loop of as many rounds as they fill (_mixed_batch; 1% rank-deficient: one round, 0.65x the time
of the identity-padded SVD of every R). The second step (the values alone) is left out for
batches, where LAPACK's values cost about as much as the SVD of the small factors with vectors
(measured before the Jacobi sweeps; not measured again for the batches that take them). The
decision is global to the batch: a batch sharded over devices exchanges this one boolean. _single
tells a vmapped matrix from a single one (its rule makes it the constant False under vmap).

On a single CPU device, a large tall batch takes its joint QR of [a, b] a chunk of problems at a
time (see CHUNK_BYTES), with a's masking (non-finite matrices read as zeros) and scaling done where
each chunk is read: the program then holds no whole-batch copy of [a, b]. The chunks give the same
factors, bit for bit on jaxlib 0.10.2 (to rounding on 0.6.0). (K > N and the wide route still form
a masked, scaled copy of a.) The mixed branch and the singular values (a leading or vmapped
batch: _mixed_batch, _batchwise) go by chunks of problems too, tall and wide: their whole-batch
LAPACK buffers would otherwise set the program's size even where no problem needs them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_batching import custom_vmap

from ._factor import (
    Basis,
    Factor,
    adjoint,
    broadcast_batch,
    eye_like,
    fold_columns,
    folded,
    matmul,
    one_for_all,
    orientation,
    reflect,
    reflect_h_apart,
    squared_norms,
    svd,
    transposed,
    triangular_factor,
    vary_like,
    varying_alike,
)
from ._jacobi import jacobi_values
from ._order import after
from ._scaling import explicitly_sharded, exponent, largest, power_of_two, scaled_back, scales
from ._svd_solve import (
    _apply_pinv,
    gram_values,
    keep_mask,
    paired_solve,
    rank_of,
    unit,
)
from ._validate import zero_unless


@custom_vmap
def _single(r: jax.Array) -> jax.Array:
    """True; under vmap the unbatched constant False (a batch is on its way)."""
    return jnp.ones((), bool)


@_single.def_vmap
def _single_vmap_rule(axis_size, in_batched, r):
    return jnp.zeros((), bool), False


@custom_vmap
def _everyone(flags: jax.Array) -> jax.Array:
    """Whether every problem's flag is set: all of flags (one per problem, any batch shape) and,
    under vmap, over the mapped problems too; the answer is never batched."""
    return jnp.all(flags)


@_everyone.def_vmap
def _everyone_vmap_rule(axis_size, in_batched, flags):
    return _everyone(jnp.all(flags, axis=0) if in_batched[0] else flags), False


def pinv_solve(
    a: jax.Array,
    b: jax.Array,
    rcond: jax.Array,
    a_ok: jax.Array | None = None,
    copies: int = 1,
    a_big: jax.Array | None = None,
    b_big: jax.Array | None = None,
    b_ok: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """x = A^+ b, a's singular values, its rank (int32) and the residuals ||b - a x||^2 of each
    column (..., K), for a (..., M, N) and b (..., M, K); b's batch dimensions broadcast against
    a's.

    Where the bound settles full rank, the rank needs no singular values: a caller that uses x
    and the rank but not the values does not pay for them. Where the shortcut solves a tall
    problem, the residuals need no product a x either: they are the squared norms of Q^H b's
    rows below N (_tall_factor), as NumPy takes them from gelsd.

    a_ok (a's batch shape, default all True): which matrices of a are finite. The factorizations
    see the others as zeros, masked where they read a (see _tall_factor); the derivative takes a
    itself, whose non-finite entries then make it NaN. copies: see paired_solve. a_big, b_big:
    a's and b's largest entries (their batch shapes), where the caller has them from its
    finiteness checks (see _scaling.extent). b_ok (b's batch shape and K, default all True):
    which columns of b are finite; the others are read as zeros (_validate.zero_unless), also
    inside the residuals' lax.cond, which then takes b itself: an operand of a cond is a whole
    buffer, so a masked b there would be a copy of b (2000 x 64: 0.1 ms, in a transposed layout).
    """
    kind = orientation(a)
    a_ok = jnp.ones(a.shape[:-2], bool) if a_ok is None else a_ok
    b_ok = jnp.ones((*b.shape[:-2], b.shape[-1]), bool) if b_ok is None else b_ok
    b_given, b = b, zero_unless(b, b_ok[..., None, :])
    # a lax.cond's branches vary alike under shard_map whatever each reads (see varying_alike)
    alike = lambda f: varying_alike(f, a, b, rcond, a_ok)  # noqa: E731
    # The factorizations see a and b scaled into LAPACK's safe range (see _scaling), x and the
    # values are scaled back below. a's scale comes from the given a (a non-finite one gets a
    # scale it does not use), so that XLA need not form the zeroed copy just to find it.
    a_big = largest(a) if a_big is None else a_big
    a_scale, b_scale = scales(a, b, a_big=a_big, b_big=b_big)
    a_given, b_const = lax.stop_gradient(a), lax.stop_gradient(b)
    if kind == "tall":  # R, c = Q^H b (N x K), R^{-1} and R^{-1} c; Q is not needed after
        # b with as many batch dimensions as a: under vmap, _tall_factor's rule puts the mapped
        # axis first, which would line b's batch dimensions up with the wrong ones of a
        pad = (1,) * (a.ndim - b.ndim)
        b_ranked = b_const.reshape(pad + b.shape), b_scale.reshape(pad + b_scale.shape)
        r, c, r_inv, r_inv_c, rest = _tall_factor(a_given, b_ranked[0], a_ok, a_scale, b_ranked[1])
        h = taus = None
    else:
        h, taus, r = triangular_factor(_prepared(a_given, a_ok, a_scale))
        r_inv = _inverse(r)
        c = b_const * b_scale  # M x K
        r_inv_c = None

    # R's entries are at most ||a_scale a||_F <= sqrt(M N) a_scale max |a_ij|
    r_big = math.sqrt(a.shape[-2] * a.shape[-1]) * a_big * a_scale[..., 0, 0]
    flags = _certainly_full(r, r_inv, rcond, r_big)  # one per problem
    full_rank = jnp.full(flags.shape, r.shape[-1], jnp.int32)

    def shortcut(c, values):  # x from R by a triangular solve; the pair (I, R^{-1})
        t = r_inv_c if kind == "tall" else _triangular_solve(r, c, adjoint_r=True)
        return t, eye_like(r), r_inv, values, full_rank, jnp.ones((), bool)

    def svd_branch(r, c):  # R = U S V^H: R^+ c (tall) or (R^H)^+ c (wide), and the SVD pair
        return *_svd_solution(kind, r, c, rcond), jnp.zeros((), bool)

    def certified(c):  # full rank is certain: the values only for the output (dropped if unused)
        t, v, w, _, rank, full = shortcut(c, None)
        return t, v, w, _values(after(r, t)), rank, full

    def by_values(c):  # the values alone decide, unless R's diagonal already drops one
        real = jnp.finfo(r.dtype).dtype
        none = lambda r: jnp.zeros(r.shape[:-1], real)  # noqa: E731  (the SVD branch)
        values = lax.cond(_surely_deficient(r, rcond), alike(none), alike(_values), r)
        everyone = _everyone(keep_mask(values, rcond)[..., -1])
        c = after(c, values, y_core=1)
        return lax.cond(everyone, alike(shortcut), alike(lambda c, _: svd_branch(r, c)), c, values)

    def mixed(c):  # the shortcut where the bound settles full rank, the SVD for the others
        t = shortcut(c, None)[0]
        lead = r.shape[:-2]
        if jnp.broadcast_shapes(lead, t.shape[:-2], jnp.shape(rcond)) != lead:  # b batched beyond a
            return *_mixed_solution(kind, r, r_inv, t, c, flags, rcond), jnp.zeros((), bool)
        # c (b's batch) and rcond broadcast to a's batch, which _MIXED's chunks and gathers split
        c, t = (jnp.broadcast_to(y, (*lead, *y.shape[-2:])) for y in (c, t))
        # (rcond only sets the rank: no derivative, and a custom_vmap takes no tangent in reverse)
        args = (r, r_inv, t, c, flags, jnp.broadcast_to(lax.stop_gradient(rcond), lead))
        return *_MIXED[kind](*args), jnp.zeros((), bool)

    # One decision for the whole batch: the shortcut alone where every problem has full rank
    # (a branch per problem would become a select that computes both), otherwise mixed, which
    # costs what the SVD alone does where no problem is settled.
    if a.ndim == 2:  # one matrix, unless under vmap: the values decide where the bound cannot
        uncertain = lambda c: lax.cond(_single(r), alike(by_values), alike(mixed), c)  # noqa: E731
    else:
        uncertain = mixed
    t, v, w, s, rank, full = lax.cond(_everyone(flags), alike(certified), alike(uncertain), c)
    x = t if kind == "tall" else reflect(h, after(taus, t, x_core=1), t)
    # The scaled problem (a_scale A) x' = b_scale b has x = x' a_scale / b_scale and values
    # s' = a_scale s (exact: powers of two). Its derivative is taken scaled too: the transposed
    # rule applies W W^H to a cotangent before A, and W W^H = (A^H A)^+ of a tiny A overflows.
    a_s = a * a_scale
    u = unit(a_s, a_big * a_scale[..., 0, 0])  # a's largest entry: see paired_solve
    x = paired_solve(a_s, b * b_scale, x, v, w, full, copies, u)
    x = scaled_back(x, a_scale, b_scale)
    fit = a, b, x
    if kind == "tall":  # the shortcut's x is the least-squares solution: residuals from the QR
        masked = lambda f: lambda a, b, x, known, ok: f(a, zero_unless(b, ok), x, known)  # noqa: E731
        residuals = lax.cond(
            full,
            varying_alike(masked(_fitted_residuals), *fit),
            varying_alike(masked(_product_residuals), *fit),
            a,
            b_given,
            x,
            lax.stop_gradient(_squares_scaled_back(rest, b_scale)),
            b_ok[..., None, :],
        )
    else:  # a wide a: the product (at full rank, the rounding errors of a consistent system)
        residuals = _product_residuals(*fit)
    return x, after(s / a_scale[..., 0], x, x_core=1), rank, residuals


def _product_residuals(a: jax.Array, b: jax.Array, x: jax.Array, *_) -> jax.Array:
    """||b - a x||^2 of each column (..., K), b's and a's batch dimensions broadcast."""
    return squared_norms(b - matmul(a, x))


@jax.custom_jvp
def _fitted_residuals(a: jax.Array, b: jax.Array, x: jax.Array, known: jax.Array) -> jax.Array:
    """_product_residuals(a, b, x) where they are known already (the least-squares solution's,
    from the QR of a tall a): known, in _product_residuals's shape. Its derivative is the
    product's, 2 Re(r^H (db - da x - a dx)) with r = b - a x, at any order."""
    shape = (*jnp.broadcast_shapes(a.shape[:-2], b.shape[:-2]), b.shape[-1])
    return jnp.broadcast_to(known, shape)


@_fitted_residuals.defjvp
def _fitted_residuals_jvp(primals, tangents):
    (a, b, x, known), (da, db, dx, _) = primals, tangents
    r = b - matmul(a, x)
    dr = db - matmul(da, x) - matmul(a, dx)
    d = 2 * jnp.sum(jnp.real(jnp.conj(r) * dr), axis=-2)
    return _fitted_residuals(a, b, x, known), d.astype(known.dtype)


def _squares_scaled_back(squares: jax.Array, b_scale: jax.Array) -> jax.Array:
    """Squared norms of columns of the scaled b_scale b (..., K) as those of b's: divided by
    b_scale (..., 1, 1) twice (a power of two: exact unless the result leaves the range)."""
    scale = b_scale[..., 0].astype(squares.dtype)
    return squares / scale / scale


def _mixed_solution(kind: str, r, r_inv, t, c, flags, rcond):
    """pinv_solve's mixed branch for problems of equal batch shape (rcond one per problem): each
    problem's (t, v, w, s, rank), the shortcut's (t and the pair (I, R^{-1}), given) where its
    flag settles full rank, the SVD's for the others. The SVD sees the settled problems' R as
    identities (already diagonal: LAPACK's gesdd then costs a fifth of a general R), and the
    values (for the output) the others' as identities; a select then takes each problem's own."""
    settled = flags[..., None, None]
    eye = eye_like(r)
    *by_svd, s_svd, rank = _svd_solution(kind, jnp.where(settled, eye, after(r, t)), c, rcond)
    values = _values(after(jnp.where(settled, r, eye), s_svd, y_core=1))
    t, v, w = (jnp.where(settled, x, y) for x, y in zip((t, eye, r_inv), by_svd))
    s = jnp.where(flags[..., None], values, s_svd)
    return t, v, w, s, jnp.where(flags, jnp.int32(r.shape[-1]), rank)


def _mixed_batch(kind: str):
    """_mixed_solution over a batch of problems of one batch shape (leading dimensions, and the
    problems of vmaps around it, which join the batch as in _batchwise). Where _room gives a
    room, the SVD takes only the unsettled problems (those whose bound does not settle full
    rank), that many at a time (_gathered); otherwise the whole batch, in chunks where large
    (_in_chunks). Each problem's answer is the same either way."""

    def solve(*args):  # _mixed_solution, looked up when traced
        return _mixed_solution(kind, *args)

    def whole(args):
        n = args[0].shape[-1]
        return _in_chunks(solve, MIXED_BUFFERS * n * n * args[0].dtype.itemsize, n, *args)

    @custom_vmap
    def run(*args):
        lead = args[0].shape[:-2]
        count = math.prod(lead)
        room = _room(count, args[0].shape[-1])
        if room is None or explicitly_sharded(args[4]):  # jnp.nonzero cannot trace there
            return whole(args)
        flat = tuple(x.reshape(count, *x.shape[len(lead) :]) for x in args)
        return tuple(x.reshape(*lead, *x.shape[1:]) for x in _gathered(whole, room, flat))

    @run.def_vmap
    def _vmap_rule(axis_size, in_batched, *args):
        r, r_inv, t, c, flags, rcond = args
        if axis_size and not any(in_batched[:2] + in_batched[4:]):  # one matrix, mapped b
            # the mapped right-hand sides join its columns: (..., n, K) -> (..., n, K B)
            t, c = (
                y if on else _broadcast_to_mapped(y, axis_size)
                for y, on in zip((t, c), in_batched[2:4])
            )
            joined = (jnp.moveaxis(y, 0, -1).reshape(*y.shape[1:-1], -1) for y in (t, c))
            t, *rest = run(r, r_inv, *joined, flags, rcond)
            t = jnp.moveaxis(t.reshape(*t.shape[:-1], -1, axis_size), -1, 0)
            return (t, *rest), (True, False, False, False, False)
        return _joined(run, axis_size, in_batched, args)

    return run


def _broadcast_to_mapped(x: jax.Array, axis_size: int) -> jax.Array:
    """x with a leading mapped axis of axis_size (a vmap rule's unbatched argument)."""
    return jnp.broadcast_to(x, (axis_size, *x.shape))


def _joined(run, axis_size: int, in_batched, args):
    """A custom_vmap rule's answer where the mapped problems join the batch: run over args, the
    unbatched ones broadcast along the mapped axis, every output batched."""
    out = run(*(x if on else _broadcast_to_mapped(x, axis_size) for x, on in zip(args, in_batched)))
    return out, (True,) * len(out)


def _room(count: int, order: int) -> int | None:
    """How many unsettled problems of a batch of count (R of the given order) the SVD takes at a
    time (FEW_UNSETTLED); None, the whole batch at once, for a batch whose SVD is under
    FEW_UNSETTLED_WORK, where _gathers_apply does not, or where a room would hold the whole batch
    (one problem: a large matrix)."""
    room = -(-count // FEW_UNSETTLED)
    if count * order**3 < FEW_UNSETTLED_WORK or not _gathers_apply() or room >= count:
        return None
    return room


def _gathers_apply() -> bool:
    """Whether a few unsettled problems are gathered (_mixed_batch): on a single CPU device only,
    where it was measured and where a batch is not split over devices (a sharded batch's gather and
    scatter would cross its shards)."""
    return jax.default_backend() == "cpu" and jax.device_count() == 1


def _gathered(whole, room: int, flat):
    """_mixed_batch's answers where the SVD takes the unsettled problems of the batch flat (one
    leading batch dimension) alone, room of them at a time: a loop of as many rounds as they
    need (one where at most room are unsettled), each gathering the next room of them (a last
    room not filled repeats the last problem, marked settled: an identity for the SVD), running
    whole (the mixed solution) on those and scattering its answers into the shortcut's. Then the
    settled problems' values (the others' R as identities, which LAPACK takes at a fifth of the
    cost), which XLA drops where the caller does not use them; after the loop: one batched
    LAPACK call at a time (_order)."""
    r, r_inv, t, _, flags, _ = flat
    count = flags.shape[0]
    (picked,) = jnp.nonzero(~flags, size=-(-count // room) * room, fill_value=count)
    eye = eye_like(r)
    real = jnp.finfo(r.dtype).dtype

    def one_room(i, answers):
        few_picked = lax.dynamic_slice_in_dim(picked, i * room, room)
        *few, few_flags, few_rcond = (jnp.take(x, few_picked, axis=0, mode="clip") for x in flat)
        out = whole((*few, few_flags | (few_picked == count), few_rcond))
        return tuple(x.at[few_picked].set(y, mode="drop") for x, y in zip(answers, out))

    rank = jnp.full(flags.shape, r.shape[-1], jnp.int32)
    s = jnp.zeros(r.shape[:-1], real)  # the unsettled problems' come from the rooms
    # inside shard_map a round's answers vary as all its inputs do (a replicated batch of a with
    # a sharded b, say), and the loop's carry must be typed so from the start
    answers = tuple(vary_like(x, *flat) for x in (t, eye, r_inv, s, rank))
    rounds = (jnp.sum(~flags, dtype=jnp.int32) + room - 1) // room
    t, v, w, s, rank = lax.fori_loop(0, rounds, one_room, answers)
    values = _values(after(jnp.where(flags[:, None, None], r, eye), s, y_core=2))
    return t, v, w, jnp.where(flags[:, None], values, s), rank


# The mixed branch's SVD takes only the unsettled problems of a large batch. 10,000 64x8 problems
# with 1% rank-deficient (x alone, vmapped, 2 CPU cores, interleaved against the whole batch's
# identity-padded SVD in one process): float32 0.65x (26.2 ms before), float64 0.72x; 1,000
# 256x32 float32 with 1% 0.81x; the same answers bit for bit. Smaller batches save less a call
# (100 64x8 float32 problems with 3% rank-deficient: 0.76x of 0.33 ms; 100 256x32: 0.81x of 3.2
# ms), so a batch whose SVD is smaller than FEW_UNSETTLED_WORK (count N^3; 256 problems of order
# 8) keeps the whole batch's SVD. Until 2026-12-06 a lax.switch picked one of three branches (a
# room of a 32nd, one of a quarter, the whole batch), each a copy of the solution in the program:
# the loop over rooms of a 32nd builds the vmapped 10,000 64x8 float32 solve in 1.24 s where the
# switch took 1.92 (106 fusions where 151), and runs as fast: interleaved in one process, 10,000
# 64x8 float32 and float64 and 1,000 256x32, 0-100% rank-deficient, x, every output and
# value_and_grad, 0.88-1.14x the switch's time over 46 cells, no difference that held in a rerun
# (float64 1%, x: 1.12x, then 0.93x); rooms of a 16th or an 8th ran no faster.
FEW_UNSETTLED = 32
FEW_UNSETTLED_WORK = 256 * 8**3
_MIXED = {kind: _mixed_batch(kind) for kind in ("tall", "wide")}


def _svd_solution(kind: str, r, c, rcond):
    """From R = U S V^H: R^+ c (tall) or (R^H)^+ c (wide), the SVD pair, the values and the rank."""
    u, s, vh = svd(r)
    f = Factor(Basis(u), s, Basis(adjoint(vh)))
    t = _apply_pinv(f if kind == "tall" else transposed(f), rcond, c)
    return t, *gram_values(f, rcond, r.dtype), s, rank_of(s, rcond)


def _batchwise(solve, buffers: int):
    """solve, a map from arrays of one batch shape (the first (..., n, n)) to a tuple of such
    arrays, taken over any batch, the problems of vmaps around it included, a chunk of problems
    at a time where the batch is large (_in_chunks, with buffers arrays of the first's size per
    problem): so that the buffers of a batched LAPACK call do not set the size of the whole
    program's, on the batch's leading dimensions and under vmap alike. (The values; the mixed
    branch has a rule of its own, _mixed_batch, which keeps one R for vmapped right-hand sides.)"""

    @custom_vmap
    def run(*args):
        n = args[0].shape[-1]
        return _in_chunks(solve, buffers * n * n * args[0].dtype.itemsize, n, *args)

    @run.def_vmap
    def _vmap_rule(axis_size, in_batched, *args):  # the mapped problems join the batch
        return _joined(run, axis_size, in_batched, args)

    return run


# pinv_solve's mixed branch holds about 8 arrays of R's size per problem (the SVD's input, U and
# V^H, the selects), the singular values alone 3 (the SVD's input, and U and V^H, which LAPACK
# does not write but jaxlib allocates), even where no problem takes the branch. Whole, 1,000
# 256x32 float64 problems kept 40.1 MiB of temporaries for x (a block glibc maps afresh on every
# call: 6,642 page faults), 42.0 for every output, 56.2 for value_and_grad; in chunks 25.9, 27.6
# and 35.5. On 2 CPU cores (interleaved against 2c6fe8a, one process) x took 0.86x the time there,
# every output of 10,000 64x8 float64 problems 0.89x (27.2 MiB where 32.3), value_and_grad with 1%
# rank-deficient problems 0.82-0.94x, the other batch programs 0.93-1.01x; the same answers.
MIXED_BUFFERS = 8


# Batches of at least JACOBI_BATCH real factors R of order up to JACOBI_ORDER take their singular
# values by Jacobi sweeps over the whole batch at once (_jacobi), on CPU, where LAPACK's gesdd
# makes one call per problem (about 4-6 us on an 8 x 8 factor, most of it the call). Values alone,
# 15 interleaved rounds in each of two processes, 2 CPU cores: 10,000 8 x 8 factors of random
# 64 x 8 matrices float32 0.34-0.55x gesdd's time, float64 0.66-0.91x; order 12 float32 0.55-0.61x,
# float64 1.1-1.6x; order 16 1.6x (float32). Accelerators keep their batched SVD (not timed there).
JACOBI_ORDER = 8
JACOBI_BATCH = 1024


@custom_vmap
def _values_alone(r: jax.Array) -> jax.Array:
    """R's singular values, without vectors: by Jacobi sweeps for a large batch of small real
    factors on CPU (JACOBI_BATCH, JACOBI_ORDER), otherwise by LAPACK's gesdd."""
    count = math.prod(r.shape[:-2])
    small = 1 <= r.shape[-1] <= JACOBI_ORDER and count >= JACOBI_BATCH
    if small and jnp.isrealobj(r) and jax.default_backend() == "cpu":
        return jacobi_values(r)
    return jnp.linalg.svd(r, compute_uv=False)


@_values_alone.def_vmap
def _values_alone_vmap_rule(axis_size, in_batched, r):  # vmapped problems count towards the batch
    return _values_alone(r), in_batched[0]


_VALUES = _batchwise(lambda r: (_values_alone(r),), 3)  # no vectors


def full_rank_parts(
    a: jax.Array,
    b: jax.Array,
    a_ok: jax.Array | None = None,
    a_scale: jax.Array | None = None,
    b_scale: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The shortcut's x with R and R^{-1}, as if full rank were certified, for a and b of the
    same batch shape: x = R^{-1} Q^H b for a tall a = Q R, x = Q R^{-H} b for a wide a^H = Q R;
    of the problem the factorizations see (_prepared: a zero where not a_ok, scaled by a_scale;
    b scaled by b_scale; by default all ok, scales 1). The same factorizations as pinv_solve's
    (the tall one through _tall_factor: the joint QR of [a, b], in chunks where those apply,
    masking and scaling as each chunk is read; no explicit Q), with no check and no derivative,
    for the full-rank methods (_methods.qr_solve). The LAPACK calls are ordered (see _order): a
    wide R^{-1} waits for x."""
    lead = a.shape[:-2]
    a_ok = jnp.ones(lead, bool) if a_ok is None else a_ok
    one = jnp.ones((*lead, 1, 1), a.dtype)
    a_scale, b_scale = (one if s is None else s for s in (a_scale, b_scale))
    if orientation(a) == "tall":
        r, _, r_inv, x, _ = _tall_factor(a, b, a_ok, a_scale, b_scale)
        return x, r, r_inv
    h, taus, r = triangular_factor(_prepared(a, a_ok, a_scale))
    t = _triangular_solve(r, b * b_scale, adjoint_r=True)
    x = reflect(h, after(taus, t, x_core=1), t)
    return x, r, _inverse(after(r, x))


def _inverse(r: jax.Array) -> jax.Array:
    """R^{-1} by a triangular solve."""
    return _triangular_solve(r, eye_like(r))


def _prepared(a: jax.Array, a_ok: jax.Array, a_scale: jax.Array) -> jax.Array:
    """a as the factorizations see it: zero where not a_ok (per matrix), scaled by a_scale."""
    return jnp.where(a_ok[..., None, None], a, 0) * a_scale


# A batch whose joint QR would take more than CHUNK_BYTES of [a, b] is factored a chunk of problems
# at a time (lax.map), with a's masking and scaling inside the loop. Whole, the batch's copy of
# [a, b] in LAPACK's layout is one more buffer of the batch's size, and above 32 MiB of temporaries
# glibc's malloc maps a program's buffers afresh on every call (BENCHMARKS.md, Page faults). On 2
# CPU cores (interleaved against the whole-batch program, one process), jaxlsq.lstsq over 10,000
# 64x8 float64 problems (x alone) took 23.8 ms where it took 41.6 (15,905 page faults a call; with
# every output the program keeps 32.3 MiB, just over, and about 7,000), 1,000 256x32 float32 28.1 ms
# where 48.0, and 10,000 64x8 float32 (31 MiB whole, no faults) 0.95-1.05x its time; the same
# answers bit for bit (jaxlib 0.10.2; to rounding on 0.6.0). Chunks keep at least UNROLLED_BATCH
# problems where the order allows the unrolled triangular solves, so that these take the whole
# batch's route. Only on a single CPU device (_chunks_apply).
CHUNK_BYTES = 8 << 20


@custom_vmap
def _tall_factor(
    a: jax.Array, b: jax.Array, a_ok: jax.Array, a_scale: jax.Array, b_scale: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """R of the tall a as the factorizations see it (_prepared), c = Q^H (b_scale b)'s first N
    rows, R^{-1}, R^{-1} c, and the squared norms of Q^H (b_scale b)'s other rows (..., K): the
    residuals of the scaled problem's least-squares solution where R has full rank, as NumPy
    takes them from gelsd. a_ok has a's batch shape; a_scale and b_scale are (..., 1, 1).

    With few right-hand sides (K <= N) and b batched like a, R and c come from one QR of [a, b]:
    its leading N x N block is R, the block beside it c (the reflectors of a's columns reach b as
    Q^H does; the later ones touch only rows below N). On 2 CPU cores that QR costs 0.7-1.15x of
    a's alone, where LAPACK's ormqr for K = 1 adds 0.1-0.4x of it (it forms the blocked
    reflectors afresh for each call). A loop over right-hand sides with one a therefore factors
    [a, b] for every b, where XLA could have kept a's QR out of the loop: such loops should keep
    a jaxlsq.factorize(a). Otherwise Q^H b by ormqr, after R^{-1} (see _order).
    """
    n, k = a.shape[-1], b.shape[-1]
    lead = a.shape[:-2]
    if k > n or jnp.broadcast_shapes(lead, b.shape[:-2]) != lead:
        return _factor_then_reflect(_prepared(a, a_ok, a_scale), b * b_scale)
    b = jnp.broadcast_to(b, (*lead, *b.shape[-2:]))
    b_scale = jnp.broadcast_to(b_scale, (*lead, 1, 1))
    per_problem = a.shape[-2] * (n + k) * a.dtype.itemsize
    return _in_chunks(_joint_factor, per_problem, n, a, b, a_ok, a_scale, b_scale)


def _in_chunks(solve, per_problem: int, order: int, *args: jax.Array) -> tuple[jax.Array, ...]:
    """solve(*args) for args of one batch shape (the first's, which has two core dimensions), a
    chunk of problems at a time (_chunk, per_problem bytes each) where the batch is large; solve
    returns a tuple of arrays with that batch shape."""
    lead = args[0].shape[:-2]
    count = math.prod(lead)
    size = _chunk(count, per_problem, order)
    if size == count:
        return solve(*args)
    flat = [x.reshape(count, *x.shape[len(lead) :]) for x in args]
    # lax.map loops over the chunks, vmapping one problem's solve over a chunk's problems
    outs = lax.map(lambda chunk: solve(*chunk), tuple(flat), batch_size=size)
    return tuple(x.reshape(*lead, *x.shape[1:]) for x in outs)


def _chunk(count: int, per_problem: int, order: int) -> int:
    """How many of count problems (per_problem bytes of [a, b] each) to factor at a time: the
    whole batch where it fits in CHUNK_BYTES, else the largest divisor of count that does (the
    chunks then split the batch without a copy), but at least UNROLLED_BATCH problems where the
    order is small enough for the unrolled triangular solves; the whole batch where no divisor
    fits."""
    if not _chunks_apply():
        return count
    least = UNROLLED_BATCH if order <= UNROLLED_ORDER else 1
    most = max(CHUNK_BYTES // max(per_problem, 1), least)
    if count <= most:
        return count
    return next((size for size in range(most, least - 1, -1) if count % size == 0), count)


def _chunks_apply() -> bool:
    """Whether large batches are factored in chunks: on a single CPU device only. The page faults
    they avoid are glibc's (an accelerator has its own allocator, and there one batched call
    beats a loop of smaller ones), and over several devices the chunks' reshape would gather a
    sharded batch onto every device."""
    return jax.default_backend() == "cpu" and jax.device_count() == 1


def _joint_factor(a, b, a_ok, a_scale, b_scale):
    """_tall_factor's joint QR of [a, b], b batched like a."""
    n = a.shape[-1]
    both = jnp.concatenate([_prepared(a, a_ok, a_scale), b * b_scale], axis=-1)
    both = jnp.linalg.qr(both, mode="r")
    r, c = both[..., :n, :n], both[..., :n, n:]
    solved = _triangular_solve(r, jnp.concatenate([eye_like(r), c], axis=-1))
    # rows n and below of Q^H b, reflected further among themselves (which keeps their norms)
    return r, c, solved[..., :n], solved[..., n:], squared_norms(both[..., n:, n:])


def _factor_then_reflect(
    a: jax.Array, b: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    h, taus, r = triangular_factor(a)
    r_inv = _inverse(r)
    c, rest = reflect_h_apart(h, after(taus, r_inv, x_core=1), b)
    return r, c, r_inv, _triangular_solve(r, c), rest


@_tall_factor.def_vmap
def _tall_factor_vmap_rule(axis_size, in_batched, a, b, a_ok, a_scale, b_scale):
    a_batched = in_batched[0] or in_batched[2] or in_batched[3]
    if not a_batched:  # one a for every mapped b: factor it once, Q^H b over the folded columns
        a = _prepared(a, a_ok, a_scale)
        axes = tuple(0 if batched else None for batched in (in_batched[1], in_batched[4]))
        outs = jax.vmap(
            lambda b, b_scale: _factor_then_reflect(a, b * b_scale),
            in_axes=axes,
            out_axes=(None, 0, None, 0, 0),
        )(b, b_scale)
        # typed as the joint factorization's (which reads b too) under shard_map
        return tuple(vary_like(y, a, b, b_scale) for y in outs), (False, True, False, True, True)
    return _joined(_tall_factor, axis_size, in_batched, (a, b, a_ok, a_scale, b_scale))


def _values(r: jax.Array) -> jax.Array:
    return _VALUES(r)[0]


def _certainly_full(
    r: jax.Array, r_inv: jax.Array, rcond: jax.Array, r_big: jax.Array | None = None
) -> jax.Array:
    """Whether every singular value of R is kept, from a bound: s_max <= ||R||_F and
    s_min >= 1 / ||R^{-1}||_F. The margin (1/4, and rcond at least 4 n eps) covers the rounding of
    the computed R^{-1}, whose relative error stays below about n eps cond(R).

    r_big (R's batch shape; by default R's largest entry): a bound on R's entries, above the
    largest by a moderate factor at most (pinv_solve's, from a's largest entry: at most
    n sqrt(M N)). The norms are taken of R 2^-e and R^{-1} 2^e, 2^e the power of two just above
    r_big, whose product is the bound's: the entries of R 2^-e are below 1, so no square
    overflows, and its norm is at least max |R_ij| / (2 r_big), so its largest squares do not
    underflow; (R 2^-e)^{-1} has a 2-norm of at least 1 / ||R 2^-e||_F >= 1 / n, so neither do
    its. A sum that overflows gives inf: no certificate, and the values decide. Without a pass for
    each matrix's largest entry, as _scaling.frobenius needs: one sum of squares each. 200x50
    float32, every output and x alone, 0.91-0.95x of the time with frobenius (61-81 interleaved
    rounds, one process each, 2 cores), the same bits; larger shapes within their noise."""
    n = r.shape[-1]
    info = jnp.finfo(r.dtype)  # of the real part
    floor = 4 * n * info.eps
    r_big = largest(r) if r_big is None else r_big
    usable = (r_big > 0) & (r_big < jnp.inf)
    e = jnp.where(usable, exponent(jnp.where(usable, r_big, 1)), 0)
    # 2^-e and 2^e both normal: e in [minexp, maxexp - 2] (float32: -126 to 126; finfo's maxexp
    # is one above the largest normal exponent). At maxexp - 1, 2^-e would be subnormal, flushed
    # to 0, and R 2^-e's norm 0 would claim full rank for any R with entries near the top.
    # Clipped there, R 2^-e's entries stay below 4 (float32: 3.4e38 / 2^126), squares finite.
    e = jnp.clip(e, info.minexp, info.maxexp - 2)[..., None, None]
    down, up = power_of_two(-e, info.dtype), power_of_two(e, info.dtype)

    def norm(x):
        parts = (x,) if jnp.isrealobj(x) else (jnp.real(x), jnp.imag(x))
        return jnp.sqrt(sum(jnp.sum(p * p, axis=(-2, -1)) for p in parts))

    bound = norm(r * down) * norm(r_inv * up) * jnp.maximum(rcond, floor)
    return bound < 0.25  # False also where R^{-1} is not finite (NaN)


def _surely_deficient(r: jax.Array, rcond: jax.Array) -> jax.Array:
    """Whether R's diagonal already shows that the cutoff drops a singular value:
    s_min <= min |R_ii| and s_max >= max |R_ii|, so min |R_ii| <= rcond max |R_ii| means
    s_min <= rcond s_max. Exactly dependent columns leave a diagonal entry at the rounding level,
    well under the cutoff. It only picks the SVD branch without the values first (which would
    then pick it too, at the cost of an SVD without vectors); either branch is right."""
    d = jnp.abs(jnp.diagonal(r, axis1=-2, axis2=-1))
    return jnp.all(jnp.min(d, axis=-1) <= rcond * jnp.max(d, axis=-1))


# Batches of at least UNROLLED_BATCH problems of order up to UNROLLED_ORDER have their triangular
# solves unrolled into elementwise operations over the batch. LAPACK's trsm costs about 0.8 us
# per call on an 8 x 8 factor, most of it the call itself. On 10,000 such factors with 9
# right-hand sides (2 CPU cores): 8.4 ms against 3.8 unrolled in float32, 7.7 against 5.8 in
# float64; at order 16 unrolled takes 0.6x (float32) to 1.0x, at 32 it is 2.6-3.9x slower and
# takes 7 s to compile. The unrolled form costs compile time (a 30x6 solve's program compiled in
# 0.6-0.8 s where it took 0.4-0.5), which a single matrix or a small batch never wins back.
# Right-hand sides vmapped over one R stay one solve with more columns. The thresholds were
# measured on CPU only; accelerators take the same paths, not yet timed there.
UNROLLED_ORDER = 8
UNROLLED_BATCH = 1024


def _triangular_solve(r: jax.Array, y: jax.Array, adjoint_r: bool = False) -> jax.Array:
    """R^{-1} y (R^{-H} y with adjoint_r) for upper triangular R; batch dimensions broadcast."""
    solve = _adjoint_solve if adjoint_r else _solve
    if one_for_all(r, y):
        return folded(lambda y: solve(r.reshape(r.shape[-2:]), y), r, y)
    return solve(*broadcast_batch(r, y))


def _triangular(adjoint_r: bool):
    """(r, y) -> R^{-1} y (R^{-H} y with adjoint_r) for r and y of the same batch shape, unrolled or
    by LAPACK's trsm depending on the number of problems, vmapped ones included."""

    @custom_vmap
    def solve(r: jax.Array, y: jax.Array) -> jax.Array:
        if r.shape[-1] <= UNROLLED_ORDER and math.prod(r.shape[:-2]) >= UNROLLED_BATCH:
            return _substitution(r, y, adjoint_r)
        return lax.linalg.triangular_solve(
            r, y, left_side=True, lower=False, transpose_a=adjoint_r, conjugate_a=adjoint_r
        )

    @solve.def_vmap
    def _vmap_rule(axis_size, in_batched, r, y):  # vmapped problems count towards the batch
        if not in_batched[0]:  # one R for every mapped y: the mapped axis joins y's columns
            return fold_columns(lambda y: solve(r, y), y), True
        y = y if in_batched[1] else jnp.broadcast_to(y, (axis_size, *y.shape))
        return solve(r, y), True

    return solve


_solve = _triangular(adjoint_r=False)
_adjoint_solve = _triangular(adjoint_r=True)


def _substitution(r: jax.Array, y: jax.Array, adjoint_r: bool) -> jax.Array:
    """_triangular_solve by back substitution (forward for R^H), one row of the answer at a time,
    each subtracting the rows found before it in the order LAPACK's trsm does."""
    n = r.shape[-1]
    if adjoint_r:  # R^H is lower triangular: its entry (i, j) is conj(R[j, i])
        order, entry = range(n), lambda i, j: jnp.conj(r[..., j, i])
    else:
        order, entry = range(n - 1, -1, -1), lambda i, j: r[..., i, j]
    rows = {}
    for i in order:
        acc = y[..., i, :]
        for j, row in rows.items():
            acc = acc - entry(i, j)[..., None] * row
        rows[i] = acc / entry(i, i)[..., None]
    return jnp.stack([rows[i] for i in range(n)], axis=-2)
