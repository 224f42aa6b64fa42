"""Full-rank fast paths: Householder QR and the normal equations (Cholesky).

Both assume what the SVD path does not: full rank (QR), or in addition good conditioning
(Cholesky, whose normal equations square the condition number). Under their assumption JAX's own
QR, Cholesky and triangular-solve rules differentiate them correctly, to any order. Each checks
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

from ._factor import adjoint, matmul
from ._order import after


def _diagonal_check(d: jax.Array, ratio: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(rank estimate, assumption holds) from a factor's diagonal magnitudes d (..., k)."""
    passed = d > ratio * jnp.max(d, axis=-1, keepdims=True)
    return jnp.sum(passed, axis=-1, dtype=jnp.int32), jnp.all(passed, axis=-1)


def _flag(x: jax.Array, holds: jax.Array) -> jax.Array:
    """x where the assumption holds, NaN (in value and gradient) where it does not."""
    return x * jnp.where(holds, 1, jnp.nan)[..., None, None].astype(x.dtype)


def qr_solve(a: jax.Array, b: jax.Array, rcond: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Minimum-norm x for full column rank (tall) or full row rank (wide) a; and the rank."""
    m, n = a.shape[-2:]
    if m >= n:  # a = Q R: x = R^{-1} Q^H b
        q, r = jnp.linalg.qr(a)
        x = lax.linalg.triangular_solve(r, matmul(adjoint(q), b), left_side=True, lower=False)
    else:  # a^H = Q R, a = R^H Q^H: the minimum-norm x = Q R^{-H} b
        q, r = jnp.linalg.qr(adjoint(a))
        z = lax.linalg.triangular_solve(  # after Q is formed (see _order)
            after(r, q), b, left_side=True, lower=False, transpose_a=True, conjugate_a=True
        )
        x = matmul(q, z)
    # Rounding leaves the diagonal entry of an exactly dependent column at a few eps ||A||, which
    # can exceed eps max(M, N): the check keeps a margin of 1e3 over that default cutoff, capped
    # at sqrt(eps) (past it the margin would flag well-conditioned matrices, all of them from 1).
    eps = float(jnp.finfo(a.dtype).eps)
    margin = min(1e3 * eps * max(m, n), eps**0.5)
    cutoff = jnp.maximum(rcond, jnp.asarray(margin, rcond.dtype))
    rank, holds = _diagonal_check(jnp.abs(jnp.diagonal(r, axis1=-2, axis2=-1)), cutoff[..., None])
    return _flag(x, holds), rank


def cholesky_solve(a: jax.Array, b: jax.Array, lam: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x from the normal equations (A^H A + lam) x = A^H b, or x = A^H (A A^H + lam)^{-1} b when
    wide (the minimum-norm answer); and the rank estimate."""
    m, n = a.shape[-2:]
    ah = adjoint(a)
    tall = m >= n
    gram = matmul(ah, a) if tall else matmul(a, ah)
    gram = gram + lam[..., None, None].astype(a.dtype) * jnp.eye(gram.shape[-1], dtype=a.dtype)
    chol = jnp.linalg.cholesky(gram)
    rhs = matmul(ah, b) if tall else b
    y = lax.linalg.triangular_solve(chol, rhs, left_side=True, lower=True)
    z = lax.linalg.triangular_solve(
        chol, y, left_side=True, lower=True, transpose_a=True, conjugate_a=True
    )
    x = z if tall else matmul(ah, z)
    d = jnp.real(jnp.diagonal(chol, axis1=-2, axis2=-1))
    d = jnp.where(jnp.isnan(d), 0, d)
    threshold = 1e3 * float(jnp.finfo(a.dtype).eps)
    k = gram.shape[-1]
    holds = _well_conditioned(gram, chol, threshold, z)
    count, _ = _diagonal_check(d, jnp.asarray(threshold**0.5, d.dtype))
    rank = jnp.where(holds, k, jnp.minimum(count, k - 1))
    return _flag(x, holds), rank


def _well_conditioned(
    gram: jax.Array, chol: jax.Array, threshold: float, z: jax.Array
) -> jax.Array:
    """1 / cond(G) > threshold, estimated: a Rayleigh quotient after inverse iteration (an upper
    bound on the smallest eigenvalue, tight once it has converged) over ||G||_F (>= the largest).
    Its triangular solves wait for the solve's last one, z (see _order)."""
    k = gram.shape[-1]
    v = jnp.broadcast_to(
        jnp.linspace(1.0, 2.0, k, dtype=gram.dtype)[:, None], (*gram.shape[:-1], 1)
    )
    v = after(v, lax.stop_gradient(z))
    for _ in range(3):
        y = lax.linalg.triangular_solve(chol, v, left_side=True, lower=True)
        v = lax.linalg.triangular_solve(
            chol, y, left_side=True, lower=True, transpose_a=True, conjugate_a=True
        )
        v = v / jnp.linalg.norm(v, axis=(-2, -1), keepdims=True)
    smallest = jnp.real(jnp.sum(jnp.conj(v) * matmul(gram, v), axis=(-2, -1)))
    largest = jnp.linalg.norm(gram, axis=(-2, -1))
    ratio = lax.stop_gradient(smallest / largest)  # a decision, not a quantity to differentiate
    return jnp.isfinite(ratio) & (ratio > threshold)
