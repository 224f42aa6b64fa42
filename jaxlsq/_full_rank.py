r"""The plain solve of one tall or wide matrix, with a shortcut where it has full rank.

Every tall solve starts with the Householder QR a = Q R (a wide one with a^H = Q R). The singular
values of R alone, without vectors, cost LAPACK's gesdd a fraction of the full SVD, and they are
all the rank decision needs. Where the cutoff keeps all of them (full column rank for a tall a,
full row rank for a wide one), the pseudo-inverse needs no SVD vectors:

    tall:  A^+ = R^{-1} Q^H,           x = R^{-1} Q^H b            (the QR least-squares solve)
    wide:  A^+ = Q R^{-H},             x = Q R^{-H} b              (the minimum-norm solution)

Both are backward stable, like the SVD solve. Otherwise the SVD of R (with vectors) gives
x = V S^+ U^H Q^H b as in _svd_solve. Either way rank, singular values and x are NumPy's; the two
branches differ in rounding only. A lax.cond picks the branch at run time; it holds only N x N
and N x K work (Q is applied outside it), and the derivative is taken outside it too.

The derivative is _svd_solve's rule through the pair (V, Z) of the tall a (or of a^H when wide),
(A^H A)^+ = V Z^H. At full rank (I, (A^H A)^{-1}) is that pair in another gauge, and
(A^H A)^{-1} = R^{-1} R^{-H} (A A^H = R^H R when wide) comes from two triangular solves; so one
rule serves both branches, to any order. At full rank one term of the rule vanishes (the
null-space term of a tall a, the residual term of a wide one); a lax.cond skips its O(M N K)
products there.

Under vmap a branch picked per problem would turn into a select that computes both, so the
shortcut is taken only for a single matrix: _single is True, except under vmap, where its rule
makes it the constant False and XLA keeps the SVD branch alone. Batched input (leading
dimensions) goes the SVD way directly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_batching import custom_vmap

from ._factor import (
    Basis,
    Factor,
    adjoint,
    factorize,
    reduction,
    reflect,
    reflect_h,
    svd,
    transposed,
    triangular_factor,
)
from ._svd_solve import _apply_pinv, factored_solve, gram_values, keep_mask, paired_solve


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
        f = factorize(lax.stop_gradient(a))
        return factored_solve(a, f, b, rcond), f.s
    h, taus, r = triangular_factor(lax.stop_gradient(a))
    values = jnp.linalg.svd(r, compute_uv=False)  # the values alone: no vectors
    b_const = lax.stop_gradient(b)
    c = reflect_h(h, taus, b_const) if kind == "tall" else b_const  # (N or M) x K

    def shortcut(c):  # x from R by a triangular solve; the pair (I, R^{-1} R^{-H})
        eye = jnp.eye(r.shape[-1], dtype=r.dtype)
        inverse_gram = _triangular_solve(r, _triangular_solve_h(r, eye))
        t = _triangular_solve(r, c) if kind == "tall" else _triangular_solve_h(r, c)
        return t, eye, inverse_gram, values

    def svd_branch(c):  # R = U S V^H: R^+ c (tall) or (R^H)^+ c (wide), and the SVD pair
        u, s, vh = svd(r)
        f = Factor(Basis(u), s, Basis(adjoint(vh)))
        t = _apply_pinv(f if kind == "tall" else transposed(f), rcond, c)
        return t, *gram_values(f, rcond, r.dtype), s

    full = keep_mask(values, rcond)[-1]
    t, v, z, s = lax.cond(
        _single(values), lambda c: lax.cond(full, shortcut, svd_branch, c), svd_branch, c
    )
    x = t if kind == "tall" else reflect(h, taus, t)
    full_rank = keep_mask(s, rcond)[-1]  # of the branch taken (under vmap: the SVD's values)
    return paired_solve(a, b, x, v, z, full_rank), s


def _triangular_solve(r: jax.Array, y: jax.Array) -> jax.Array:
    """R^{-1} y for upper triangular R."""
    return lax.linalg.triangular_solve(r, y, left_side=True, lower=False)


def _triangular_solve_h(r: jax.Array, y: jax.Array) -> jax.Array:
    """R^{-H} y for upper triangular R."""
    return lax.linalg.triangular_solve(
        r, y, left_side=True, lower=False, transpose_a=True, conjugate_a=True
    )
