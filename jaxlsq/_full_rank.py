r"""The plain solve of one tall or wide matrix, with a shortcut where it has full rank.

Every tall solve starts with the Householder QR a = Q R (a wide one with a^H = Q R). The singular
values of R alone, without vectors, cost LAPACK's gesdd a fraction of the full SVD, and they are
all the rank decision needs. Where the cutoff keeps all of them (full column rank for a tall a,
full row rank for a wide one), the pseudo-inverse needs no SVD vectors:

    tall:  A^+ = R^{-1} Q^H,           x = R^{-1} Q^H b            (the QR least-squares solve)
    wide:  A^+ = Q R^{-H},             x = Q R^{-H} b              (the minimum-norm solution)

Both are backward stable, like the SVD solve. Otherwise the SVD of R (with vectors) runs and the
solve is _svd_solve's, from the same QR. Either way rank, singular values and x are NumPy's; the
two branches differ in rounding only. A lax.cond picks the branch at run time.

Under vmap a branch picked per problem would turn into a select that computes both, so the
shortcut is taken only for a single matrix: _single is True, except under vmap, where its rule
makes it the constant False and XLA keeps the SVD branch alone. Batched input (leading
dimensions) goes the SVD way directly.

Derivatives. At full rank the Golub-Pereyra rule of _svd_solve simplifies. With G = (A^H A)^{-1}
= R^{-1} R^{-H} for a tall A (null space empty),

    dx = G (dA^H r + A^H (db - dA x)),

and with G = (A A^H)^{-1} = R^{-1} R^{-H} for a wide A (r = 0, row space everything), y = G b,

    dx = A^H G (db - dA x - A dA^H y) + dA^H y.

G is applied by two triangular solves with R, so the first-order work is O(M N K) on top of the
solve. For outer derivatives R carries the tangent of the Cholesky factor of A^H A (the QR's R
is one, up to the signs of its rows): from dR^H R + R^H dR = dA^H A + A^H dA,

    dR = Phi(R^{-H} (dA^H A + A^H dA) R^{-1}) R,

with Phi keeping the upper triangle and half the (real) diagonal. Everything the rules build
from R is R^{-1} R^{-H}, which the sign (or phase) of R's rows does not change.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_batching import custom_vmap

from ._factor import (
    adjoint,
    factor_of_triangular,
    factorize,
    matmul,
    reduction,
    reflect,
    reflect_h,
    triangular_factor,
)
from ._svd_solve import factored_solve, keep_mask


@custom_vmap
def _single(s: jax.Array) -> jax.Array:
    """True; under vmap (s batched) the unbatched constant False."""
    return jnp.ones((), bool)


@_single.def_vmap
def _single_vmap_rule(axis_size, in_batched, s):
    return jnp.zeros((), bool), False


def pinv_solve(a: jax.Array, b: jax.Array, rcond: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x = A^+ b and a's singular values, for a (..., M, N) and b (..., M, K)."""
    kind = reduction(a)
    if a.ndim != 2 or b.ndim != 2 or kind is None:
        return _svd_branch(a, b, rcond)
    h, taus, r = triangular_factor(lax.stop_gradient(a))
    s = jnp.linalg.svd(r, compute_uv=False)  # the values alone: no vectors
    full = keep_mask(s, rcond)[-1]

    def svd_branch(a, b):
        f = factor_of_triangular(kind, h, taus, r)
        return factored_solve(a, f, b, rcond), f.s

    def shortcut(a, b):
        return full_rank_solve(a, (h, taus, r), b), s

    def single(a, b):
        return lax.cond(full, shortcut, svd_branch, a, b)

    return lax.cond(_single(s), single, svd_branch, a, b)


def _svd_branch(a, b, rcond):
    f = factorize(lax.stop_gradient(a))
    return factored_solve(a, f, b, rcond), f.s


def _gram_solve(r: jax.Array, w: jax.Array) -> jax.Array:
    """R^{-1} R^{-H} w."""
    y = lax.linalg.triangular_solve(
        r, w, left_side=True, lower=False, transpose_a=True, conjugate_a=True
    )
    return lax.linalg.triangular_solve(r, y, left_side=True, lower=False)


@jax.custom_jvp
def full_rank_solve(a: jax.Array, qr: tuple, b: jax.Array) -> jax.Array:
    """x = A^+ b for a tall a of full column rank or a wide one of full row rank, from the QR
    (h, taus, R) of a or a^H; qr carries no derivative (the rule goes through a)."""
    h, taus, r = qr
    if reduction(a) == "tall":
        return lax.linalg.triangular_solve(r, reflect_h(h, taus, b), left_side=True, lower=False)
    y = lax.linalg.triangular_solve(
        r, b, left_side=True, lower=False, transpose_a=True, conjugate_a=True
    )
    return reflect(h, taus, y)


@full_rank_solve.defjvp
def _full_rank_solve_jvp(primals, tangents):
    a, qr, b = primals
    da, _, db = tangents
    x = full_rank_solve(a, qr, b)  # recursive: outer transformations see this rule again
    ah, dah = adjoint(a), adjoint(da)
    if reduction(a) == "tall":
        r = gram_root(a, qr[2])
        res = b - matmul(a, x)
        return x, _gram_solve(r, matmul(dah, res) + matmul(ah, db - matmul(da, x)))
    r = gram_root(ah, qr[2])
    y = _gram_solve(r, b)
    dah_y = matmul(dah, y)
    return x, matmul(ah, _gram_solve(r, db - matmul(da, x) - matmul(a, dah_y))) + dah_y


@jax.custom_jvp
def gram_root(c: jax.Array, r: jax.Array) -> jax.Array:
    """r, the triangular factor of the QR of c (tall, full column rank): R^H R = C^H C."""
    return r


@gram_root.defjvp
def _gram_root_jvp(primals, tangents):
    c, r = primals
    dc = tangents[0]
    r = gram_root(c, r)  # recursive, for the orders above
    x = matmul(adjoint(dc), c)
    x = x + adjoint(x)
    m = lax.linalg.triangular_solve(
        r, x, left_side=True, lower=False, transpose_a=True, conjugate_a=True
    )  # R^{-H} X
    m = lax.linalg.triangular_solve(r, m, left_side=False, lower=False)  # R^{-H} X R^{-1}
    half_diagonal = jnp.real(jnp.diagonal(m, axis1=-2, axis2=-1)) / 2
    phi = jnp.triu(m, 1) + jnp.eye(m.shape[-1], dtype=m.dtype) * half_diagonal[..., None, :]
    return r, matmul(phi, r)
