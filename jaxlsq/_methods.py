"""Full-rank fast paths: Householder QR and the normal equations (Cholesky).

Both assume what the SVD path does not: full rank (QR), or in addition good conditioning
(Cholesky, whose normal equations square the condition number). Under their assumption their
derivatives are the full-rank solve's, taken by products with R^{-1} or G^{-1} = (A^H A + lam)^{-1}
(computed after the solve), to any order; differentiated twice, JAX's own QR, Cholesky and
triangular-solve rules would add triangular solves that no data dependence orders, which can hang a
batch on jaxlib 0.10 (see _order). Each checks
its assumption on the factor it already has, and where the check fails the solution is NaN (never
a finite wrong answer; multiplied by NaN so that tangents and gradients are NaN too), with the
rank estimate the check gives (0 where the factorization itself fails):
- qr: |R_ii| > c * max_j |R_jj| for every i (R of a, or of a^H when wide), with
  c = max(rcond, min(1e3 eps max(M, N), sqrt(eps))). Exact rank deficiency gives a zero diagonal
  entry in exact arithmetic, which rounding leaves at a few eps; the margin keeps it below c, at
  the price of flagging matrices with cond(a) beyond about 1 / c (sqrt(eps) caps the margin, so
  that large float32 problems are not all flagged: 1e3 eps max(M, N) passes 1 at M = 8400 there).
  The count of entries above c estimates the rank; rare near-deficient matrices (Kahan's) pass
  the check.
- cholesky: eps * cond(A)^2 <= 1e-3, with cond(A)^2 = cond(G) of G = A^H A + lam (or A A^H + lam)
  estimated from its Cholesky factor: ||G||_F over a Rayleigh quotient after three steps of
  inverse iteration. Past it the normal equations keep fewer than 3 digits. Where it fails the
  rank estimate is below min(M, N): the number of Cholesky diagonal entries above
  sqrt(1e3 eps) times the largest, at most min(M, N) - 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ._factor import adjoint, eye_like, matmul
from ._full_rank import full_rank_parts
from ._order import after, token
from ._scaling import frobenius, unit_scale
from ._svd_solve import gram_pair, paired_solve, unit


def _diagonal_check(d: jax.Array, ratio: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(rank estimate, assumption holds) from a factor's diagonal magnitudes d (..., k)."""
    passed = d > ratio * jnp.max(d, axis=-1, keepdims=True)
    return jnp.sum(passed, axis=-1, dtype=jnp.int32), jnp.all(passed, axis=-1)


def _flag(x: jax.Array, holds: jax.Array) -> jax.Array:
    """x where the assumption holds, NaN (in value and gradient) where it does not."""
    return x * jnp.where(holds, 1, jnp.nan)[..., None, None].astype(x.dtype)


def qr_solve(
    a: jax.Array,
    b: jax.Array,
    rcond: jax.Array,
    a_ok: jax.Array | None = None,
    a_scale: jax.Array | None = None,
    b_scale: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Minimum-norm x for full column rank (tall) or full row rank (wide) a; and the rank.

    With scales (..., 1, 1) given, the problem solved is (a_scale A) x = b_scale b, and a_ok (a's
    batch shape) tells which matrices the factorization reads as zeros (non-finite ones): these
    are applied where the factorization reads a (a tall batch's chunks, _full_rank.full_rank_parts),
    so that no masked, scaled copy of a whole batch is formed for it.

    The derivative is the solve's at full rank, through the pair (I, R^{-1}) (_svd_solve's
    paired_solve): products only, so that derivatives of any order add no LAPACK call (see
    _order; JAX's QR and triangular-solve rules, differentiated twice, leave theirs unordered)."""
    parts = full_rank_parts(lax.stop_gradient(a), lax.stop_gradient(b), a_ok, a_scale, b_scale)
    a = a if a_scale is None else a * a_scale
    b = b if b_scale is None else b * b_scale
    return _checked_solve(a, b, rcond, parts)


def _checked_solve(
    a: jax.Array, b: jax.Array, rcond: jax.Array, parts: tuple[jax.Array, jax.Array, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """qr_solve from a's parts (x, R, R^{-1}) (full_rank_parts, no derivative)."""
    x, r, r_inv = parts
    x = paired_solve(a, b, x, _identity_like(r), r_inv, jnp.ones((), bool))
    # Rounding leaves the diagonal entry of an exactly dependent column at a few eps ||A||, which
    # can exceed eps max(M, N): the check keeps a margin of 1e3 over that default cutoff, capped
    # at sqrt(eps) (past it the margin would flag well-conditioned matrices, all of them from 1).
    eps = float(jnp.finfo(a.dtype).eps)
    margin = min(1e3 * eps * max(a.shape[-2:]), eps**0.5)
    cutoff = jnp.maximum(rcond, jnp.asarray(margin, rcond.dtype))
    rank, holds = _diagonal_check(jnp.abs(jnp.diagonal(r, axis1=-2, axis2=-1)), cutoff[..., None])
    return _flag(x, holds), rank


def _identity_like(r: jax.Array) -> jax.Array:
    """The identity of R's order for each problem, batched as R is (also over vmapped problems):
    beside a batched R^{-1}, an unbatched identity made the second derivative of a vmapped solve
    fail to lower (a transpose of the wrong rank in the lax.cond of _svd_solve's tangent)."""
    return eye_like(r) + token(r, core=2)[..., None, None].astype(r.dtype)


def weighted_qr_solve(
    a: jax.Array, b: jax.Array, w: jax.Array | None, rcond: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """qr_solve of (W^{1/2} a, W^{1/2} b) for row weights w (..., M) (None: unweighted).

    A tall a takes its derivative in w from the weighted normal equations (_weighted_tall_qr),
    finite at zero weights, where the chain rule through sqrt(w) would be infinite. A wide one
    keeps the plain rule: there every weight must be positive for full row rank (a zero weight
    fails the check), and the answer does not depend on the weights.
    """
    if w is None:
        return qr_solve(a, b, rcond)
    root = _root(w, a.dtype)
    rank = qr_solve(lax.stop_gradient(root * a), lax.stop_gradient(root * b), rcond)[1]
    if a.shape[-2] < a.shape[-1]:
        return qr_solve(root * a, root * b, rcond)[0], rank
    return _weighted_tall_qr(a, b, w, rcond), rank


def _root(w: jax.Array, dtype) -> jax.Array:
    """sqrt(w) as a column (..., M, 1) of a's dtype, to scale the rows of a and b."""
    return jnp.sqrt(w)[..., None].astype(dtype)


@jax.custom_jvp
def _weighted_tall_qr(a: jax.Array, b: jax.Array, w: jax.Array, rcond: jax.Array) -> jax.Array:
    root = _root(w, a.dtype)
    return qr_solve(root * a, root * b, rcond)[0]


@_weighted_tall_qr.defjvp
def _weighted_tall_qr_jvp(primals, tangents):
    """qr_solve's rule in (a, b) at fixed weights; in w, dx = (A^H W A)^{-1} A^H dW r with the
    unweighted residual r = b - A x, through R of W^{1/2} A: (A^H W A)^{-1} = R^{-1} R^{-H}."""
    a, b, w, rcond = primals
    da, db, dw, _ = tangents
    root = _root(w, a.dtype)
    rooted = root * a
    parts = full_rank_parts(lax.stop_gradient(rooted), lax.stop_gradient(root * b))
    x, dx = jax.jvp(
        lambda a, b: _checked_solve(root * a, root * b, rcond, parts)[0], (a, b), (da, db)
    )
    # (A^H W A)^{-1} = W' W'^H for the pair (I, W' = R^{-1}) of W^{1/2} A: the solve's own R^{-1},
    # carrying the pair's derivative for outer transformations. Taken for u W^{1/2} A (see unit:
    # W' W'^H ~ 1/s^2 leaves the range long before x does), pair W' / u, applied to u^2 A^H dW r
    u = unit(rooted)
    y = u * matmul(adjoint(a), u * (dw[..., None].astype(a.dtype) * (b - matmul(a, x))))
    r_inv = parts[2]
    _, pair = gram_pair(rooted * u, _identity_like(r_inv), after(r_inv, x) / u)
    return x, dx + matmul(pair, matmul(adjoint(pair), y))


def cholesky_solve(
    a: jax.Array, b: jax.Array, lam: jax.Array, w: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """x from the normal equations (A^H W A + lam) x = A^H W b, or the minimum-norm
    x = (W^{1/2} A)^H (W^{1/2} A A^H W^{1/2} + lam)^{-1} W^{1/2} b when wide; and the rank
    estimate. Row weights w (..., M) (None: unweighted) enter a tall problem's Gram matrix as W
    itself, so that its derivative in w stays finite at zero weights."""
    m, n = a.shape[-2:]
    tall = m >= n
    if w is not None and not tall:
        root = _root(w, a.dtype)
        a, b = root * a, root * b
    ah = adjoint(a)
    wa, wb = (a, b) if w is None or not tall else (w[..., None] * a, w[..., None] * b)
    gram = matmul(ah, wa) if tall else matmul(a, ah)
    gram = gram + lam[..., None, None].astype(a.dtype) * jnp.eye(gram.shape[-1], dtype=a.dtype)
    rhs = matmul(ah, wb) if tall else b
    # The LAPACK calls see constants: z = G^{-1} rhs and G^{-1} carry the derivative by products
    # (_normal_solution), so that derivatives of any order add no LAPACK call (see _order; JAX's
    # Cholesky and triangular-solve rules, differentiated twice, leave theirs unordered).
    gram_const = lax.stop_gradient(gram)
    chol = jnp.linalg.cholesky(gram_const)
    y = lax.linalg.triangular_solve(chol, lax.stop_gradient(rhs), left_side=True, lower=True)
    z = lax.linalg.triangular_solve(
        chol, y, left_side=True, lower=True, transpose_a=True, conjugate_a=True
    )
    d = jnp.real(jnp.diagonal(chol, axis1=-2, axis2=-1))
    d = jnp.where(jnp.isnan(d), 0, d)
    threshold = 1e3 * float(jnp.finfo(a.dtype).eps)
    k = gram.shape[-1]
    holds = _well_conditioned(gram_const, chol, threshold, z)
    chol_inv = lax.linalg.triangular_solve(  # after the check (XLA drops it where unused)
        after(chol, holds.astype(d.dtype), y_core=0),
        eye_like(chol),
        left_side=True,
        lower=True,
    )
    z = _normal_solution(gram, rhs, z, matmul(adjoint(chol_inv), chol_inv))
    x = z if tall else matmul(ah, z)
    count, _ = _diagonal_check(d, jnp.asarray(threshold**0.5, d.dtype))
    rank = jnp.where(holds, k, jnp.minimum(count, k - 1))
    return _flag(x, holds), rank


@jax.custom_jvp
def _normal_solution(g: jax.Array, rhs: jax.Array, z: jax.Array, g_inv: jax.Array) -> jax.Array:
    """z = G^{-1} rhs, computed already (z and g_inv = G^{-1} carry no derivative); the derivative
    dz = G^{-1} (drhs - dG z), by products."""
    return z


@_normal_solution.defjvp
def _normal_solution_jvp(primals, tangents):
    g, rhs, z, g_inv = primals
    dg, drhs = tangents[:2]
    z = _normal_solution(g, rhs, z, g_inv)  # recursive: outer transformations see this rule again
    return z, matmul(_inverse_of(g, g_inv), drhs - matmul(dg, z))


@jax.custom_jvp
def _inverse_of(g: jax.Array, g_inv: jax.Array) -> jax.Array:
    """G^{-1}, computed already, with its derivative -G^{-1} dG G^{-1}."""
    return g_inv


@_inverse_of.defjvp
def _inverse_of_jvp(primals, tangents):
    g, g_inv = primals
    g_inv = _inverse_of(g, g_inv)
    return g_inv, -matmul(g_inv, matmul(tangents[0], g_inv))


def _well_conditioned(
    gram: jax.Array, chol: jax.Array, threshold: float, z: jax.Array
) -> jax.Array:
    """1 / cond(G) > threshold, estimated: a Rayleigh quotient after inverse iteration (an upper
    bound on the smallest eigenvalue, tight once it has converged) over ||G||_F (>= the largest).
    Its triangular solves wait for the solve's last one, z (see _order).

    Every step solves with step v, step = ||G||_F rounded up to a power of two (>= the largest
    eigenvalue), so that the iterates never shrink (plain steps shrink them by 1 / lam where a
    large lam dominates G, down to underflow): v grows by a factor between 1 and
    2 sqrt(k) cond(G) per step, far from overflow wherever the check can pass, unless ||G||_F
    lies within about (2 sqrt(k))^3 of the largest float (lam = 5e37 in float32): an
    overflowing iterate gives a NaN estimate, which fails the check. v is brought to a largest
    entry of 1 before the quotient, and the norms are taken scaled, as their squares would leave
    the range first."""
    k = gram.shape[-1]
    largest = frobenius(gram)
    step = (1 / unit_scale(largest, always=True)).astype(gram.dtype)[..., None, None]
    v = jnp.broadcast_to(
        jnp.linspace(1.0, 2.0, k, dtype=gram.dtype)[:, None], (*gram.shape[:-1], 1)
    )
    v = after(v, lax.stop_gradient(z))
    for _ in range(3):
        y = lax.linalg.triangular_solve(chol, step * v, left_side=True, lower=True)
        v = lax.linalg.triangular_solve(
            chol, y, left_side=True, lower=True, transpose_a=True, conjugate_a=True
        )
    v = v / jnp.max(jnp.abs(v), axis=(-2, -1), keepdims=True)
    quotient = jnp.sum(jnp.conj(v) * matmul(gram, v), axis=(-2, -1))
    smallest = jnp.real(quotient) / jnp.sum(jnp.abs(v) ** 2, axis=(-2, -1))
    ratio = lax.stop_gradient(smallest / largest)  # a decision, not a quantity to differentiate
    return jnp.isfinite(ratio) & (ratio > threshold)
