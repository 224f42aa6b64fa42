"""The factorization every solve starts from: a = left diag(s) right^H, an SVD in factored form.

Like LAPACK's gelsd, a tall matrix (M >= 2 N) is first reduced to its N x N triangular factor by
Householder QR, a = Q R, and only R goes through the SVD, R = U diag(s) V^H; a wide one is
treated the same way through a^H. The left singular vectors Q U are never formed: Q stays as its
Householder reflectors and is applied to blocks of vectors (LAPACK's ormqr), so a solve with K
right-hand sides costs one QR, one small SVD and O(M N K). Near-square matrices take the SVD
directly, which is cheaper there when the vectors are needed. (The plain solve, jaxlsq.lstsq
without ridge or weights, takes the QR of every matrix instead and needs no SVD vectors where it
certifies full rank: see _full_rank.)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_batching import custom_vmap

from ._order import after
from ._scaling import largest, unit_scale

HIGHEST = lax.Precision.HIGHEST

# Reduce to the triangular factor first when one side is at least this many times the other
# (LAPACK's gesdd does so from about 1.8; on batches of small matrices it neither wins nor loses).
REDUCE_RATIO = 2


def reduction(a: jax.Array) -> str | None:
    """ "tall" or "wide" where a's factorization goes through a small triangular factor."""
    m, n = a.shape[-2:]
    if m >= REDUCE_RATIO * n:
        return "tall"
    if n >= REDUCE_RATIO * m:
        return "wide"
    return None


def orientation(a: jax.Array) -> str:
    """ "tall" (M >= N: the QR of a) or "wide" (the QR of a^H); reduction's kind where it has one.

    The plain solve takes the QR of every matrix, near-square ones too: where it certifies full
    rank, no SVD is needed at all (see _full_rank)."""
    m, n = a.shape[-2:]
    return "tall" if m >= n else "wide"


# jax.lax.linalg.ormqr applies Q without forming it in newer JAX; older JAX forms the thin Q.
_ormqr = getattr(lax.linalg, "ormqr", None)


def matmul(x: jax.Array, y: jax.Array) -> jax.Array:
    """Batched matrix product at full precision (GPUs would otherwise round through TF32)."""
    return jnp.matmul(x, y, precision=HIGHEST)


def adjoint(x: jax.Array) -> jax.Array:
    """Conjugate transpose of the last two axes."""
    return jnp.conj(jnp.swapaxes(x, -1, -2))


def eye_like(r: jax.Array) -> jax.Array:
    """Identities of r's shape (..., n, n) and dtype, varying over shard_map's axes as r does."""
    return vary_like(jnp.broadcast_to(jnp.eye(r.shape[-1], dtype=r.dtype), r.shape), r)


def _varying(x) -> frozenset:
    """The shard_map axes over which x's value varies, from its type (empty outside shard_map):
    manual_axis_type.varying since JAX 0.7 or so, vma before."""
    t = jax.typeof(x)
    manual = getattr(t, "manual_axis_type", None)
    return frozenset(manual.varying if manual is not None else getattr(t, "vma", ()))


def vary_like(x: jax.Array, *refs) -> jax.Array:
    """x, typed to vary over the shard_map axes over which any of refs does. Inside shard_map the
    branches of a lax.cond must vary alike, and a constant (an identity, a full rank, zeros) does
    not vary where the other branch's answer does. Outside shard_map x itself, unchanged."""
    axes = tuple(sorted(frozenset().union(*map(_varying, refs)) - _varying(x)))
    if not axes:
        return x
    if hasattr(lax, "pcast"):
        return lax.pcast(x, axes, to="varying")
    return lax.pvary(x, axes)


def invariant_like(x: jax.Array, *refs) -> jax.Array:
    """x, typed to vary over no shard_map axis beyond those of refs: where x was computed from
    refs alone but beside what varies further (the singular values from R of the joint QR of
    [a, b] for one replicated a and a sharded b; the values ordered after x, see _order), the
    first device's x along those axes, by a psum of x and zeros (the devices' x differ only by
    rounding). Outside shard_map, or where x varies no further, x itself."""
    axes = tuple(sorted(_varying(x) - frozenset().union(*map(_varying, refs))))
    if not axes:
        return x
    first = lax.axis_index(axes) == 0
    return lax.psum(jnp.where(first, x, jnp.zeros_like(x)), axes)


def varying_alike(f, *refs):
    """f with every output typed to vary as refs do (vary_like): the branches of one lax.cond,
    each wrapped with the same refs (the problem's inputs), then agree whatever each depends on.
    Outside shard_map f itself."""
    if not frozenset().union(*map(_varying, refs)):
        return f

    def cast(*args):
        return jax.tree_util.tree_map(lambda y: vary_like(y, *refs), f(*args))

    return cast


def svd(a: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Thin SVD: u (..., M, k), s (..., k) descending, vh (..., k, N), with k = min(M, N)."""
    return jnp.linalg.svd(a, full_matrices=False)


def broadcast_batch(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Broadcast the batch dimensions (all but the last two) of x and y against each other."""
    batch = jnp.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    return (
        jnp.broadcast_to(x, (*batch, *x.shape[-2:])),
        jnp.broadcast_to(y, (*batch, *y.shape[-2:])),
    )


def _reflector_product(transpose: bool):
    """y -> Q y (or Q^H y) for Q given by Householder reflectors h (..., D, n), taus (..., n)."""

    @custom_vmap
    def apply(h: jax.Array, taus: jax.Array, y: jax.Array) -> jax.Array:
        if one_for_all(h, y):
            one = h.reshape(h.shape[-2:]), taus.reshape(taus.shape[-1:])
            return folded(lambda y: apply(*one, y), h, y)
        h, y = broadcast_batch(h, y)
        taus = jnp.broadcast_to(taus, (*h.shape[:-2], taus.shape[-1]))
        return _ormqr(h, taus, y, left=True, transpose=transpose)

    @apply.def_vmap
    def _vmap_rule(axis_size, in_batched, h, taus, y):
        # vmap over y alone (over right-hand sides) folds the mapped axis into y's columns
        # instead of copying the reflectors once per mapped element.
        h_batched, taus_batched, y_batched = in_batched
        if h_batched or taus_batched or not y_batched:
            h = h if h_batched else jnp.broadcast_to(h, (axis_size, *h.shape))
            taus = taus if taus_batched else jnp.broadcast_to(taus, (axis_size, *taus.shape))
            y = y if y_batched else jnp.broadcast_to(y, (axis_size, *y.shape))
            return apply(h, taus, y), True
        return fold_columns(lambda y: apply(h, taus, y), y), True

    return apply


def one_for_all(op: jax.Array, y: jax.Array) -> bool:
    """Whether one operator op (..., D, n) (a batch of ones, or none) acts on a batch of y."""
    return math.prod(op.shape[:-2]) == 1 < math.prod(y.shape[:-2])


def folded(apply, op: jax.Array, y: jax.Array) -> jax.Array:
    """apply, one operator (op's batch: ones) acting on each column alike, on y (..., D, K) with
    its problems folded into the columns of one call (fold_columns), shaped as broadcasting gives
    it: LAPACK applies the operator once, rather than to a copy of it per problem."""
    out = fold_columns(apply, y.reshape(-1, *y.shape[-2:]))
    return out.reshape(*jnp.broadcast_shapes(op.shape[:-2], y.shape[:-2]), *out.shape[-2:])


def fold_columns(apply, y: jax.Array) -> jax.Array:
    """apply, a map that acts on each column of its argument alike, on y (B, ..., D, K) whose
    leading (vmapped) axis holds more right-hand sides: one call on (..., D, K B), unfolded after
    (the mapped operator is applied once rather than copied per mapped element)."""
    columns = jnp.moveaxis(y, 0, -1)  # (..., D, K, B)
    out = apply(columns.reshape(*columns.shape[:-2], -1))
    return jnp.moveaxis(out.reshape(*out.shape[:-1], *columns.shape[-2:]), -1, 0)


_q_times = _reflector_product(transpose=False)
_qh_times = _reflector_product(transpose=True)


def reflect_h(h: jax.Array, taus: jax.Array | None, y: jax.Array) -> jax.Array:
    """Q^H y (..., n, K) for y (..., D, K) and the thin Q (D x n) of a QR: reflectors h with their
    taus, or the explicit Q with taus None (see _householder_qr)."""
    if taus is None:
        return matmul(adjoint(h), y)
    return _qh_times(h, taus, y)[..., : h.shape[-1], :]


def reflect_h_apart(
    h: jax.Array, taus: jax.Array | None, y: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(Q^H y, ||y - Q Q^H y||^2 per column (..., K)): reflect_h's answer and the squared norms of
    y's part outside Q's range, the least-squares residuals of a = Q R, from the rows of the full
    Q^H y below n (from the explicit thin Q, y - Q Q^H y)."""
    if taus is None:
        c = matmul(adjoint(h), y)
        return c, squared_norms(y - matmul(h, c))
    n = h.shape[-1]
    full = _qh_times(h, taus, y)
    return full[..., :n, :], squared_norms(full[..., n:, :])


def squared_norms(y: jax.Array) -> jax.Array:
    """The squared 2-norm of each column of y (..., D, K): (..., K), real."""
    return jnp.sum(jnp.real(y * jnp.conj(y)), axis=-2)


def reflect(h: jax.Array, taus: jax.Array | None, t: jax.Array) -> jax.Array:
    """Q t (..., D, K) for t (..., n, K); Q as in reflect_h."""
    if taus is None:
        return matmul(h, t)
    d, n = h.shape[-2:]
    padding = [(0, 0)] * (t.ndim - 2) + [(0, d - n), (0, 0)]
    return _q_times(h, taus, jnp.pad(t, padding))


class Basis(NamedTuple):
    """Orthonormal columns B = Q u: u (..., n, k) explicit, Q (D x n) a thin orthogonal factor.

    Q is Householder reflectors h (..., D, n) with their scalars taus (..., n) when JAX has
    ormqr, the explicit thin Q (..., D, n) with taus None otherwise, or the identity (h None).
    """

    u: jax.Array
    h: jax.Array | None = None
    taus: jax.Array | None = None

    def apply_h(self, y: jax.Array) -> jax.Array:
        """B^H y for y (..., D, K)."""
        qh_y = y if self.h is None else reflect_h(self.h, self.taus, y)
        return matmul(adjoint(self.u), qh_y)

    def dense(self) -> jax.Array:
        """B as an explicit matrix (only where Q is explicit or the identity)."""
        return self.u if self.h is None else matmul(self.h, self.u)

    def apply(self, t: jax.Array) -> jax.Array:
        """B t for t (..., k, K)."""
        ut = matmul(self.u, t)
        return ut if self.h is None else reflect(self.h, self.taus, ut)

    def explicit(self) -> Basis:
        """The same basis as one explicit matrix (Q u formed once), so that B^H y and B t are
        single matrix products; LAPACK's ormqr re-forms the blocked reflectors on every call."""
        return self if self.h is None else Basis(reflect(self.h, self.taus, self.u))


class Factor(NamedTuple):
    """a = left diag(s) right^H with orthonormal left (M x k) and right (N x k), k = min(M, N)."""

    left: Basis
    s: jax.Array
    right: Basis


def _householder_qr(a: jax.Array, explicit: bool) -> tuple[jax.Array, jax.Array | None, jax.Array]:
    """Thin QR of a tall a (..., D, n): (reflectors or thin Q, taus or None, R (..., n, n)).

    Q comes explicit (and differentiable by JAX) when asked for or when JAX has no ormqr; both
    forms start from the same LAPACK geqrf, which XLA computes once for the two.
    """
    if explicit or _ormqr is None:
        q, r = jnp.linalg.qr(a)
        return q, None, after(r, q)  # what uses R waits for Q (see _order)
    h, taus = jnp.linalg.qr(a, mode="raw")  # h is LAPACK's column-major output, transposed
    h = jnp.swapaxes(h, -1, -2)
    return h, taus, jnp.triu(h[..., : a.shape[-1], :])


def triangular_factor(
    a: jax.Array, explicit: bool = False
) -> tuple[jax.Array, jax.Array | None, jax.Array]:
    """The QR of a (M >= N), or of a^H (M < N): (h, taus, R) as _householder_qr gives them."""
    return _householder_qr(a if orientation(a) == "tall" else adjoint(a), explicit)


def factor_of_triangular(kind: str, h: jax.Array, taus: jax.Array | None, r: jax.Array) -> Factor:
    """The factorization of a tall (kind "tall") or wide ("wide") a from triangular_factor's QR.

    The LAPACK calls come in a chain (see _order): every later application of the reflectors
    waits for the SVD (an explicit Q comes before R is used, see _householder_qr).
    """
    u, s, vh = svd(r)
    if taus is not None:
        taus = after(taus, s, x_core=1, y_core=1)
    if kind == "tall":  # a = Q R, R = U S V^H: left = Q U, right = V
        return Factor(Basis(u, h, taus), s, Basis(adjoint(vh)))
    # a^H = Q R, R = U S V^H, so a = V S (Q U)^H: left = V, right = Q U
    return Factor(Basis(adjoint(vh)), s, Basis(u, h, taus))


def transposed(f: Factor) -> Factor:
    """The factorization of a^H from a's."""
    return Factor(f.right, f.s, f.left)


def factorize(a: jax.Array, explicit: bool = False) -> Factor:
    """The SVD of a (..., M, N) in factored form; tall and wide ones through a triangular factor.

    Callers that need it in several places either pass the result on or ask for exactly this
    computation, so that under jit XLA merges the calls into one factorization (common-subexpression
    elimination). explicit=True keeps Q as a matrix, so that Basis.dense works and JAX can
    differentiate the result (its QR and SVD rules).
    """
    kind = reduction(a)
    if kind is None:  # near-square: the SVD directly (LAPACK's gesdd scales a itself)
        u, s, vh = svd(a)
        return Factor(Basis(u), s, Basis(adjoint(vh)))
    # the QR sees a scaled into LAPACK's safe range (see _scaling); only s carries the scale
    scale = unit_scale(largest(a))
    f = factor_of_triangular(kind, *triangular_factor(a * scale[..., None, None], explicit))
    return Factor(f.left, f.s / scale[..., None], f.right)
