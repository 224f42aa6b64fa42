r"""The pseudo-inverse solve x = A^+ b and its derivative rules.

Derivation (Golub & Pereyra 1973). Along any perturbation that keeps the rank of A,
with x = A^+ b, r = b - A x and P = A^+ A the projector onto the row space,

    dA^+ = -A^+ dA A^+ + A^+ A^{+H} dA^H (I - A A^+) + (I - A^+ A) dA^H A^{+H} A^+,

so that

    dx = A^+ (db - dA x) + A^+ A^{+H} dA^H r + (I - P) dA^H A^{+H} x
       = A^+ (db - dA x + A^{+H} dA^H r) + (I - P) z,        z = dA^H A^{+H} x.

Every term applies A^+, A^{+H} or P to an (N or M)-by-K block, so with the thin SVD the tangent
costs O(M N K) on top of the factorization. Where the rank would change along the perturbation
A^+ is discontinuous (Stewart 1977) and no derivative exists; these rules then return the
derivative of the constant-rank extension: the rank is the one fixed by the rcond cutoff at the
evaluation point, and the dropped singular directions stay dropped.

Second order. A JVP rule is itself differentiated by any outer transformation (jax.hessian is
forward over reverse), so every non-linear function of A that the rule uses must carry a robust
derivative too. Raw SVD factors do not: their derivative divides by s_i^2 - s_j^2. The rules
therefore read A^+ through the factor pair (P, V) with A^+ = V P^H, where V (N x k) holds the kept
right singular vectors and P = U S^{-1} (M x k) the kept left ones scaled by 1/s (dropped columns
zeroed in both). The pair has a gauge freedom (P -> P R, V -> V R for unitary R), and the tangent

    dV = (I - V V^H) dA^H P,
    dP = (I - A V P^H) dA V (P^H P) - P V^H dA^H P,

reproduces dA^+ = dV P^H + V dP^H and dP_V = d(V V^H) exactly (expand, using A A^+ = A V P^H,
A^+ A^{+H} = V P^H P V^H and A^{+H} A^+ = P P^H, and compare with dA^+ above) with no division
by differences of singular values. Everything the rules build from the pair is gauge invariant, so
second derivatives come out right even where singular values repeat or vanish (the rule calls
itself, so higher orders follow the same way). Only second-order work pays for these dense
O(M N k) tangents; first-order work stays O(M N K).

Tall and wide matrices. There the factorization never forms U (see _factor), so P = U S^{-1} is
not at hand. A tall A (M >= N) is read through the pair (V, W) with V as above and W (N x k) any
factor of the Gram matrix's pseudo-inverse, (A^H A)^+ = W W^H: W = V S^{-1} from the SVD, or
W = R^{-1} from A = Q R at full rank (V = I), which the solve has at hand without an SVD. Then
A^+ = W W^H A^H, A^{+H} = A W W^H and A^+ A = V V^H. The pair's tangent, with P = A W,

    dV = (I - V V^H) dA^H P (W^H V),
    dW = -W (P^H dA W) + (I - V V^H) dA^H P (W^H W),

gives d(V V^H) = d(A^+ A) and d(W W^H) = d(A^H A)^+ (the pseudo-inverse's rule for a Hermitian
matrix at constant rank, using A (I - V V^H) = 0), again with no division by differences of
singular values; the rules use V and W only through V V^H and W W^H, so the gauge (V -> V R,
W -> W R') does not matter. A wide A uses the pair of A^H, with (A A^H)^+ = W W^H and
A^+ = A^H W W^H. The primal x still comes from the orthogonal factors; the tangents multiply by A
and then by S^{-2}, like the seminormal equations, so their rounding error is O(eps cond(A)^2)
relative, the order of the derivative's own sensitivity to rounding in A.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_batching import custom_vmap

from ._factor import (
    Factor,
    adjoint,
    factorize,
    matmul,
    orientation,
    reduction,
    transposed,
    varying_alike,
)
from ._order import after
from ._scaling import largest, unit_scale


def keep_mask(s: jax.Array, rcond: jax.Array) -> jax.Array:
    """Singular values kept by LAPACK's rule: s_i > rcond * s_max (s sorted, descending)."""
    return s > jnp.asarray(rcond)[..., None] * s[..., :1]  # rcond: a scalar or one per problem


def rank_of(s: jax.Array, rcond: jax.Array) -> jax.Array:
    """The number of singular values s (..., k) that the cutoff keeps, int32."""
    return jnp.sum(keep_mask(s, rcond), axis=-1, dtype=jnp.int32)


def _kept_power(s: jax.Array, rcond: jax.Array, power: int, dtype) -> jax.Array:
    """s_i ** power for kept values, 0 for dropped ones, in dtype."""
    keep = keep_mask(s, rcond)
    return jnp.where(keep, jnp.where(keep, s, 1) ** power, 0).astype(dtype)


def _apply_filtered(f: Factor, filt: jax.Array, y: jax.Array) -> jax.Array:
    """right diag(filt) left^H y, through the factorization (orthogonal factors only)."""
    return f.right.apply(filt[..., None] * f.left.apply_h(y))


def _apply_pinv(f: Factor, rcond: jax.Array, y: jax.Array) -> jax.Array:
    """A^+ y = right S^+ left^H y."""
    return _apply_filtered(f, _kept_power(f.s, rcond, -1, y.dtype), y)


# --- robust factors for the tangents --------------------------------------------------------


# Each pair function takes a's factorization f, computed once by the caller (it carries no
# derivative: the rules differentiate through a), so that the solve and its tangent share it.


@jax.custom_jvp
def pinv_factors(a: jax.Array, rcond: jax.Array, f: Factor) -> tuple[jax.Array, jax.Array]:
    """The factor pair (P, V) of A^+ = V P^H (see the module docstring); near-square A only.

    rcond is the effective cutoff ratio (already resolved from None or out-of-range values).
    """
    s_inv = _kept_power(f.s, rcond, -1, a.dtype)[..., None, :]
    keep = _kept_power(f.s, rcond, 0, a.dtype)[..., None, :]
    return f.left.u * s_inv, f.right.u * keep


@pinv_factors.defjvp
def _pinv_factors_jvp(primals, tangents):
    a, rcond, f = primals
    da = tangents[0]  # the cutoff ratio carries no derivative: the rank is held fixed
    p, v = pinv_factors(a, rcond, f)  # recursive: outer transformations see this rule again
    da_v = matmul(da, v)
    dah_p = matmul(adjoint(da), p)
    dv = dah_p - matmul(v, matmul(adjoint(v), dah_p))
    outside = da_v - matmul(a, matmul(v, matmul(adjoint(p), da_v)))  # (I - A A^+) dA V
    dp = matmul(outside, matmul(adjoint(p), p)) - matmul(p, matmul(adjoint(v), dah_p))
    return (p, v), (dp, dv)


def gram_factors(a: jax.Array, rcond: jax.Array, f: Factor) -> tuple[jax.Array, jax.Array]:
    """The pair (V, W) of a tall A, with W = V S^{-1} (kept columns; dropped ones zeroed).

    They give (A^H A)^+ = W W^H, A^+ = W W^H A^H and A^+ A = V V^H (see the module docstring).
    """
    return gram_pair(a, *gram_values(f, rcond, a.dtype))


def gram_values(f: Factor, rcond: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """gram_factors' values (V, W) from the factorization f of a tall matrix, no derivative."""
    v = f.right.u  # explicit: the right factor of a tall matrix is R's V
    keep = _kept_power(f.s, rcond, 0, dtype)[..., None, :]
    return v * keep, v * _kept_power(f.s, rcond, -1, dtype)[..., None, :]


def gram_middle(v: jax.Array, w: jax.Array) -> jax.Array:
    """C = V^H (A^H A)^+ V = (V^H W)(W^H V) of the pair: diag(S^{-2}) (0 where dropped) in the
    SVD's gauge."""
    vh_w = matmul(adjoint(v), w)
    return matmul(vh_w, adjoint(vh_w))


@jax.custom_jvp
def gram_pair(a: jax.Array, v: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(v, w), a pair of the tall a in any gauge, carrying the pair's tangent (v and w carry none).

    At full rank (I, R^{-1}) is one, for a = Q R."""
    return v, w


@gram_pair.defjvp
def _gram_pair_jvp(primals, tangents):
    a, v, w = primals
    da = tangents[0]
    v, w = gram_pair(a, v, w)  # recursive: outer transformations see this rule again
    p = matmul(a, w)  # U (kept columns) in the SVD's gauge

    def outside(y):  # (I - V V^H) y
        return y - matmul(v, matmul(adjoint(v), y))

    dah_p = matmul(adjoint(da), p)
    dv = outside(matmul(dah_p, matmul(adjoint(w), v)))
    pe = matmul(adjoint(p), matmul(da, w))
    dw = matmul(outside(dah_p), matmul(adjoint(w), w)) - matmul(w, pe)
    return (v, w), (dv, dw)


class _Ops(NamedTuple):
    """Linear maps the tangents apply: A^+, A^{+H}, A^+ A^{+H}, I - A^+ A; and A^{+H} x for
    x = A^+ y (computed where it is asked for: a skipped term costs nothing)."""

    pinv: Callable[[jax.Array], jax.Array]
    pinv_h: Callable[[jax.Array], jax.Array]
    pinv_pinv_h: Callable[[jax.Array], jax.Array]
    null: Callable[[jax.Array], jax.Array]
    pinv_h_x: Callable[[], jax.Array]

    @classmethod
    def composed(cls, pinv, pinv_h, null, pinv_h_x) -> _Ops:
        """A^+ A^{+H} applied as the two maps in turn."""
        return cls(pinv, pinv_h, lambda w: pinv(pinv_h(w)), null, pinv_h_x)


def unit(a: jax.Array, big: jax.Array | None = None) -> jax.Array:
    """A power of two u (..., 1, 1) per matrix of a that brings its largest entry into [1/2, 1);
    big: that entry, where the caller has it at hand (see paired_solve).

    The derivative rules take their products for the problem (u A) x = u b, whose x and tangent
    are A^+ b's and whose Gram matrix's pseudo-inverse (A^H A)^+ / u^2 is of the order of the
    blocks it is applied to. Unscaled, (A^H A)^+ ~ 1/s^2 underflows to zero or overflows once s
    lies beyond the square root of the range (float32: about 1e19 or 1e-19), inside LAPACK's
    range, where x and dx are ordinary numbers: tangents and gradients came out zero or NaN. u
    multiplies the M x K and N x K blocks after each product with A or dA (the matrices only where
    an outer derivative reads a pair's tangent), exactly: scaling by a power of two rounds
    nothing."""
    return unit_scale(largest(a) if big is None else big, always=True)[..., None, None]


def unit_lam(lam: jax.Array, u: jax.Array) -> jax.Array:
    """u^2 lam for unit's u (..., 1, 1), one factor at a time (u^2 alone may underflow)."""
    u = u[..., 0, 0]
    return u * (u * lam)


def _gram_ops(a, v, w, y, x, u) -> _Ops:
    """The maps of (u A) for a tall a through its pair (V, W), or for a wide a through the pair of
    (u A)^H; y (u b), x (the solution) and u (unit: A's own products take u on the block)."""
    ah = adjoint(a)

    def times_a(t):  # (u A) t
        return u * matmul(a, t)

    def times_ah(y):  # (u A)^H y
        return u * matmul(ah, y)

    def gram_pinv(t):  # W W^H t: (A^H A)^+ t (tall) or (A A^H)^+ t (wide), of u A
        return matmul(w, matmul(adjoint(w), t))

    if orientation(a) == "tall":  # A^+ = W W^H A^H, A^+ A^{+H} = (A^H A)^+ = W W^H
        return _Ops(
            lambda y: gram_pinv(times_ah(y)),
            lambda t: times_a(gram_pinv(t)),
            gram_pinv,
            lambda t: t - matmul(v, matmul(adjoint(v), t)),
            lambda: times_a(gram_pinv(x)),
        )
    # wide: (A A^H)^+ = A^{+H} A^+ = W W^H, A^+ = A^H W W^H
    return _Ops.composed(
        lambda y: times_ah(gram_pinv(y)),
        lambda t: gram_pinv(times_a(t)),
        lambda t: t - times_ah(gram_pinv(times_a(t))),
        lambda: gram_pinv(y),
    )


# --- the solve ------------------------------------------------------------------------------


def _pinv_tangent(
    ops: _Ops, a, da, b, db, x, u, full: jax.Array | None = None, copies: int = 1
) -> jax.Array:
    """dx of x = A^+ b (the module docstring's rule) through the maps ops of u A (see unit): the
    same dx as (u A) x = u b's, whose blocks b, db, dA x and r take u here.

    full (a tall or wide a only): whether it has full rank, where one term vanishes, the null-space
    term of a tall a (I - A^+ A = 0) or the residual term of a wide one (r = 0); a lax.cond then
    skips it. Where a (with its batch) is large and K small (_large_form), the lax.cond picks only
    the term's M x K vector (A^{+H} x or r; zero at full rank) and the term is applied outside it:
    transposed by reverse mode, a lax.cond around the whole term holds its M x N cotangent in a
    buffer (and the other branch's zeros in one more) instead of adding it to the others' in
    place; the term's two O(M N K) products are then paid at full rank too. copies: how many
    copies of a vmaps hold (vmapped_copies), which the traced shapes do not show.
    """

    def dah_times(y):  # (u dA)^H y, as (y^H dA)^H: reverse mode then forms its term in a's layout
        return u * adjoint(matmul(adjoint(y), da))

    def residual():  # of u A and u b
        return u * (b - matmul(a, x))

    def residual_term():
        return ops.pinv_pinv_h(dah_times(residual()))

    def null_term():
        return ops.null(dah_times(ops.pinv_h_x()))

    dx = ops.pinv(u * (db + matmul(da, -x)))  # -x, not -(dA x): reverse mode negates N x K
    if full is None:
        return dx + residual_term() + null_term()
    tall = orientation(a) == "tall"
    if not _large_form(a, x, copies):
        vanishing, other = (null_term, residual_term) if tall else (residual_term, null_term)
        branches = (lambda: jnp.zeros_like(dx), vanishing)  # typed alike under shard_map
        zeros, vanishing = (varying_alike(f, dx, x, a, b) for f in branches)
        return dx + other() + lax.cond(full, zeros, vanishing)
    vector, apply, other = (
        (ops.pinv_h_x, ops.null, residual_term) if tall else (residual, ops.pinv_pinv_h, null_term)
    )
    shape = jax.eval_shape(vector)
    branches = (lambda: jnp.zeros(shape.shape, shape.dtype), vector)  # typed alike: varying_alike
    zeros, vector = (varying_alike(f, dx, x, a, b) for f in branches)
    y = lax.cond(full, zeros, vector)
    return dx + other() + apply(dah_times(y))


# Bytes of a (batch included) from which _pinv_tangent's lax.cond holds the vanishing term's
# M x K vector rather than the term, where also 8 K <= min(M, N). On 2 CPU cores (interleaved, one
# process, against cc6d208), value_and_grad with K = 1 took 0.65-0.68x the time on 10,000 64x8 and
# 1,000 256x32 float32 problems, 0.80-0.90x in float64 (10,000 64x8 float64: 61.4 MiB of
# temporaries down to 29.2, under malloc's 32 MiB ceiling), and 0.92-0.99x on single solves of
# 1.6-8 MB. Below the size the buffers cost little (200x50 float32 read 1.13-1.24x, within what
# two identical programs differed by at that size); with more right-hand sides the term's products
# do: K = 64 on 2000x200 1.06-1.08x, K = 4 on 64x8 1.14-1.18x; 2000x200 with K = 2-16 and 256x32
# with K = 4 0.93-1.06x.
LARGE_COTANGENT = 1 << 20


def _large_form(a: jax.Array, x: jax.Array, copies: int = 1) -> bool:
    """Whether _pinv_tangent holds only the vanishing term's vector in its lax.cond (see
    LARGE_COTANGENT): a large a (with its batch and the copies vmaps hold) and few right-hand
    sides."""
    size = a.size * copies * a.dtype.itemsize
    return size >= LARGE_COTANGENT and 8 * x.shape[-1] <= min(a.shape[-2:])


def vmapped_copies(x) -> int:
    """How many copies of x the vmaps being traced hold: the product of the sizes of the mapped
    axes along which x is batched (1 outside vmap). Read while tracing, by a custom_vmap whose rule
    records its level's size and calls itself for the levels outside; only where x is traced
    under the vmaps themselves: a function that JAX traces to a jaxpr first (a jit, such as
    _lstsq's core, or a custom_jvp rule) is batched afterwards, and inside it this reads 1."""
    if not isinstance(x, jax.core.Tracer):
        return 1
    sizes = []

    @custom_vmap
    def probe(y):
        return y

    @probe.def_vmap
    def _record(axis_size, in_batched, y):
        sizes.append(axis_size)
        return probe(y), in_batched[0]

    probe(lax.stop_gradient(x))
    return math.prod(sizes)


def paired_solve(
    a: jax.Array,
    b: jax.Array,
    x: jax.Array,
    v: jax.Array,
    w: jax.Array,
    full,
    copies: int = 1,
    u: jax.Array | None = None,
):
    """x = A^+ b, computed already, for a tall a (M >= N) with its pair (v, w), or a wide a with
    the pair of a^H, and whether a has full rank; the derivative is the solve's, through gram_pair
    (x, v and w carry none). copies: how many copies of a the vmaps around the caller hold
    (vmapped_copies, counted where the caller is traced under them), for _large_form: the rule
    itself is traced one problem at a time. u: unit(a), given where the caller has a's largest
    entry at hand (reduced inside the rule, jax 0.6 kept a second buffer of a's size: 27.7 MiB of
    temporaries for value_and_grad of 10,000 64x8 float32 problems, 12.8 given)."""
    u = unit(a) if u is None else u
    return _paired_solve(a, b, x, v, w, full, u, copies)


@partial(jax.custom_jvp, nondiff_argnums=(7,))
def _paired_solve(a, b, x, v, w, full, u, copies: int):
    return x


@_paired_solve.defjvp
def _paired_solve_jvp(copies, primals, tangents):
    a, b, x, v, w, full, u = primals
    da, db = tangents[:2]
    x = _paired_solve(a, b, x, v, w, full, u, copies)  # recursive: outer transformations see it
    # the rule's products are u A's (u = unit(a), see unit); its pair is (V, W / u)
    c = a if orientation(a) == "tall" else adjoint(a)
    pair = gram_pair(c * u, v, w / u)  # u c: read only where an outer derivative takes the pair's
    ops = _gram_ops(a, *pair, u * b, x, u)
    return x, _pinv_tangent(ops, a, da, b, db, x, u, full, copies)


# --- ridge (Tikhonov) -----------------------------------------------------------------------
#
# x = argmin ||A x - b||^2 + lam ||x||^2 over the kept singular directions, through the filter
# factors s_i / (s_i^2 + lam): x = V D S U^H b with D = diag(1 / (s_i^2 + lam)), dropped values
# filtered to 0, so lam -> 0 gives A^+ b with the same cutoff. Differentiating the normal
# equations (A_k^H A_k + lam) x = A_k^H b of the rank-k truncation A_k (constant rank) gives
#
#     dx = V D V^H (dA^H r - A^H dA x + A^H db - dlam x) + (I - V V^H) dA^H y,
#     y = U D U^H b  (so that A^H y = x and, at lam = 0, y = A^{+H} x),
#
# which is the pseudo-inverse rule above at lam = 0. The maps V D V^H and U D U^H are read from
# the robust pairs of the plain solve: with C = S^{-2} in the pair's gauge (C = V^H Z for the
# pair (V, Z), C = P^H P for (P, V)), D = (I + lam C)^{-1} C: diagonal at the point (the pairs
# come from the SVD) and differentiated as the k x k matrix formula (_resolvent), so outer
# derivatives (second order, d/dlam) stay gauge-free and finite.


def _ridge_filter(s: jax.Array, rcond: jax.Array, lam: jax.Array, dtype) -> jax.Array:
    """s_i / (s_i^2 + lam) for kept values, as 1 / (s_i + lam / s_i) (exactly 1 / s_i at lam 0)."""
    keep = keep_mask(s, rcond)
    s_kept = jnp.where(keep, s, 1)
    return jnp.where(keep, 1 / (s_kept + lam[..., None] / s_kept), 0).astype(dtype)


def ridge_solve(a: jax.Array, b: jax.Array, rcond: jax.Array, lam: jax.Array) -> jax.Array:
    """x = V diag(s / (s^2 + lam)) U^H b over the kept values; lam (...) broadcasts on the batch."""
    return factored_ridge_solve(a, factorize(lax.stop_gradient(a)), b, rcond, lam)


@jax.custom_jvp
def factored_ridge_solve(
    a: jax.Array, f: Factor, b: jax.Array, rcond: jax.Array, lam: jax.Array
) -> jax.Array:
    """ridge_solve with a's factorization f given (computed once, reused for many solves).

    f carries no derivative: the rule differentiates through a (its pairs), so f may come from
    anywhere, e.g. a factorization kept across jit boundaries.
    """
    return _apply_filtered(f, _ridge_filter(f.s, rcond, lam, b.dtype), b)


class _RidgeOps(NamedTuple):
    """The ridge rule's maps: V D V^H and I - V V^H on the row space side, and y = U D U^H b."""

    inverse: Callable[[jax.Array], jax.Array]
    null: Callable[[jax.Array], jax.Array]
    y: jax.Array


@jax.custom_jvp
def _resolvent(c: jax.Array, lam: jax.Array, c_diag: jax.Array) -> tuple[jax.Array, jax.Array]:
    """E = (I + lam C)^{-1} and D = E C for the pair's C (..., k, k); lam (...) broadcasts.

    At the point where it is evaluated the pair comes from the SVD, so C is diag(c_diag), kept
    s^{-2} and 0 for dropped values (to rounding: V^H V = I): E and D are diagonal and need no
    LU solve (and no LAPACK call, see _order). Their tangents are those of the matrix formula.
    """
    lam = lam[..., None].astype(c_diag.dtype)
    e = 1 / (1 + lam * c_diag)
    shape = jnp.broadcast_shapes(c.shape, lam[..., None].shape)
    eye = jnp.eye(c.shape[-1], dtype=c.dtype)
    return (
        jnp.broadcast_to(eye * e[..., None, :].astype(c.dtype), shape),
        jnp.broadcast_to(eye * (e * c_diag)[..., None, :].astype(c.dtype), shape),
    )


@_resolvent.defjvp
def _resolvent_jvp(primals, tangents):
    # E = (I + lam C)^{-1}: dE = -E (dlam C + lam dC) E, and dD = dE C + E dC.
    c, lam, c_diag = primals
    dc, dlam, _ = tangents
    e, d = _resolvent(c, lam, c_diag)  # recursive: outer transformations see this rule again
    lam, dlam = (t[..., None, None].astype(c.dtype) for t in (lam, dlam))
    de = -matmul(e, matmul(dlam * c + lam * dc, e))
    return (e, d), (de, matmul(de, c) + matmul(e, dc))


def _ridge_ops(
    a: jax.Array, rcond: jax.Array, f: Factor, lam: jax.Array, b: jax.Array, u: jax.Array
) -> _RidgeOps:
    """The maps of the problem (u A, u b, u^2 lam) (see unit), with its factorization f scaled."""
    kind = reduction(a)
    ah = adjoint(a)
    f, lam = f._replace(s=f.s * u[..., 0]), unit_lam(lam, u)
    c_diag = _kept_power(f.s, rcond, -2, jnp.finfo(a.dtype).dtype)  # C at this point

    def sandwich(basis, middle, w):  # basis middle basis^H w
        return matmul(basis, matmul(middle, matmul(adjoint(basis), w)))

    def times_a(t):  # (u A) t
        return u * matmul(a, t)

    def times_ah(y):  # (u A)^H y
        return u * matmul(ah, y)

    # (the pairs read u A only where an outer derivative takes their tangents)
    if kind == "wide":  # the pair of A^H: V holds A's left singular vectors
        left, w = gram_factors(ah * u, rcond, transposed(f))
        c = gram_middle(left, w)
        _, d = _resolvent(c, lam, c_diag)
        cd = matmul(c, d)  # S^{-2} D: A^H U (S^{-2} D) U^H A = V D V^H
        return _RidgeOps(
            lambda w: times_ah(sandwich(left, cd, times_a(w))),
            lambda w: w - times_ah(sandwich(left, c, times_a(w))),
            sandwich(left, d, u * b),
        )
    if kind == "tall":  # U = A V S^{-1}: U D U^H = A V (S^{-2} D) V^H A^H
        v, w = gram_factors(a * u, rcond, f)
        c = gram_middle(v, w)
        _, d = _resolvent(c, lam, c_diag)
        y = times_a(sandwich(v, matmul(c, d), times_ah(u * b)))
    else:  # U = P S: U D U^H = P (S D S) P^H = P E P^H
        p, v = pinv_factors(a * u, rcond, f)
        e, d = _resolvent(matmul(adjoint(p), p), lam, c_diag)
        y = sandwich(p, e, u * b)
    return _RidgeOps(
        lambda w: sandwich(v, d, w),
        lambda w: w - matmul(v, matmul(adjoint(v), w)),
        y,
    )


@factored_ridge_solve.defjvp
def _factored_ridge_solve_jvp(primals, tangents):
    a, f, b, rcond, lam = primals
    da, _, db, _, dlam = tangents
    x = factored_ridge_solve(a, f, b, rcond, lam)  # recursive, as for solve
    u = unit(a)  # the rule is that of (u A, u b, u^2 lam): the same x and dx
    ops = _ridge_ops(a, rcond, f, lam, b, u)
    r = u * (b - matmul(a, x))
    dah = adjoint(da)
    inner = u * (matmul(dah, r) + matmul(adjoint(a), u * (db - matmul(da, x))))
    inner = inner - unit_lam(dlam, u)[..., None, None].astype(x.dtype) * x
    return x, ops.inverse(inner) + ops.null(u * matmul(dah, ops.y))


# --- row weights ----------------------------------------------------------------------------
#
# min sum_i w_i |a_i x - b_i|^2 is the problem of (W^{1/2} A, W^{1/2} b). Through the square roots
# the w-derivative would divide by sqrt(w_i), infinite at w_i = 0, where x is in fact smooth. The
# rule therefore takes the tangents in A, b and lam through the ridge rule at (W^{1/2} A,
# W^{1/2} b) and adds the w-term of the weighted normal equations (A^H W A + lam) x = A^H W b,
#
#     dx_w = (A^H W A + lam)^+_k A^H dW r,   r = b - A x,
#
# which holds at any w >= 0, zero weights included. (Its Golub-Pereyra null-space term vanishes:
# A^H dW r lies in A's row space, which W^{1/2} A keeps; where a zero-weight row lies outside the
# others' row space, raising its weight raises the rank, and the rule keeps the constant-rank
# extension.) Second derivatives that differentiate w twice, or w and A, pass through sqrt(w)
# again and are infinite or NaN at w_i = 0 exactly; elsewhere they are exact.


@jax.custom_jvp
def weighted_solve(
    a: jax.Array, b: jax.Array, rcond: jax.Array, lam: jax.Array, w: jax.Array
) -> jax.Array:
    """The ridge solve of (W^{1/2} a, W^{1/2} b) for row weights w (..., M) >= 0."""
    root = jnp.sqrt(w)[..., None].astype(a.dtype)
    return ridge_solve(root * a, root * b, rcond, lam)


@weighted_solve.defjvp
def _weighted_solve_jvp(primals, tangents):
    a, b, rcond, lam, w = primals
    da, db, _, dlam, dw = tangents
    root = jnp.sqrt(w)[..., None].astype(a.dtype)
    a_w, b_w = root * a, root * b
    x, dx = jax.jvp(
        lambda a_w, b_w, lam: ridge_solve(a_w, b_w, rcond, lam),
        (a_w, b_w, lam),
        (root * da, root * db, dlam),
    )
    r = b - matmul(a, x)
    f_w = factorize(lax.stop_gradient(a_w))  # the one ridge_solve takes (merged under jit)
    u = unit(a_w)  # the maps are those of u a_w (see unit): (u a_w)^H dW (u r) for A^H dW r
    ops = _ridge_ops(a_w, rcond, f_w, lam, b_w, u)
    dx_w = ops.inverse(u * matmul(adjoint(a), u * (dw[..., None] * r)))
    return x, dx + dx_w


# --- singular values ------------------------------------------------------------------------


def singular_values(a: jax.Array, x: jax.Array) -> jax.Array:
    """All min(M, N) singular values of a, descending, from the factorization that solved for x
    (they wait for x, see _order)."""
    return singular_values_of(a, after(factorize(lax.stop_gradient(a)).s, x, x_core=1))


@jax.custom_jvp
def singular_values_of(a: jax.Array, s: jax.Array) -> jax.Array:
    """a's singular values s, computed already; derivatives go through a."""
    return s


@singular_values_of.defjvp
def _singular_values_jvp(primals, tangents):
    # ds_i = Re(u_i^H dA v_i), exact to first order also where singular values repeat.
    (a, s), (da, _) = primals, tangents
    # a is factored again (the solve keeps no vectors of a's SVD), after everything the solve
    # computed (see _order); dense_svd's rule carries the second derivative.
    u, s, v = dense_svd(after(a, s, y_core=1))
    ds = jnp.real(jnp.sum(jnp.conj(u) * matmul(da, v), axis=-2))
    return s, ds.astype(s.dtype)


@jax.custom_jvp
def dense_svd(a: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The thin SVD a = u diag(s) v^H with u, v as matrices: factorize's chain of LAPACK calls,
    differentiated by a rule made of products only. Through JAX's own QR rule the second
    derivative of the values would add triangular solves that no data dependence orders against
    the chain's orgqr and gesdd (a hang on jaxlib 0.10, see _order); this rule adds no LAPACK
    call at any order."""
    f = factorize(a, explicit=True)
    return f.left.dense(), f.s, f.right.dense()


@dense_svd.defjvp
def _dense_svd_jvp(primals, tangents):
    r"""The thin SVD's derivative at distinct nonzero values, with P = U^H dA V (k x k):

        ds_i = Re P_ii,
        U^H dU = F o (P S + S P^H) + i Im(diag P) S^{-1},    V^H dV = F o (S P + P^H S),
        F_ij = 1 / (s_j^2 - s_i^2) (0 on the diagonal),

    plus the parts outside the bases where a is not square: (I - U U^H) dA V S^{-1} in dU,
    (I - V V^H) dA^H U S^{-1} in dV. (The imaginary diagonal is a gauge choice, the one JAX's
    SVD rule makes.) Where values repeat or vanish the vectors have no derivative and it divides
    by zero, as JAX's rules for the QR and SVD did here before."""
    (a,), (da,) = primals, tangents
    u, s, v = dense_svd(a)
    dav = matmul(da, v)
    p = matmul(adjoint(u), dav)
    ds = jnp.real(jnp.diagonal(p, axis1=-2, axis2=-1))
    row, col = s[..., None, :], s[..., :, None]  # s_j along a row, s_i down a column
    eye = jnp.eye(s.shape[-1], dtype=s.dtype)
    f = (1 / ((row - col) * (row + col) + eye) - eye).astype(a.dtype)
    inv = (1 / s).astype(a.dtype)
    ps, sp = p * row.astype(a.dtype), col.astype(a.dtype) * p
    du_in = f * (ps + adjoint(ps))
    if jnp.iscomplexobj(a):
        du_in = du_in + 1j * jnp.imag(p) * eye * inv[..., None, :]
    du, dv = matmul(u, du_in), matmul(v, f * (sp + adjoint(sp)))
    m, n = a.shape[-2:]
    if m > n:  # U has fewer columns than rows
        du = du + (dav - matmul(u, p)) * inv[..., None, :]
    if n > m:
        dahu = matmul(adjoint(da), u)
        dv = dv + (dahu - matmul(v, adjoint(p))) * inv[..., None, :]
    return (u, s, v), (du, ds.astype(s.dtype), dv)
