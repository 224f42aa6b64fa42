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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._factor import adjoint, matmul, svd


def keep_mask(s: jax.Array, rcond: jax.Array) -> jax.Array:
    """Singular values kept by LAPACK's rule: s_i > rcond * s_max (s sorted, descending)."""
    return s > rcond * s[..., :1]


def _pinv(p: jax.Array, v: jax.Array, y: jax.Array) -> jax.Array:
    """A^+ y = V (P^H y)."""
    return matmul(v, matmul(adjoint(p), y))


def _pinv_h(p: jax.Array, v: jax.Array, z: jax.Array) -> jax.Array:
    """A^{+H} z = P (V^H z)."""
    return matmul(p, matmul(adjoint(v), z))


@jax.custom_jvp
def pinv_factors(a: jax.Array, rcond: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The factor pair (P, V) of A^+ = V P^H (see the module docstring).

    rcond is the effective cutoff ratio (already resolved from None or out-of-range values).
    """
    u, s, vh = svd(a)
    keep = keep_mask(s, rcond)
    s_inv = jnp.where(keep, 1 / jnp.where(keep, s, 1), 0).astype(a.dtype)
    return u * s_inv[..., None, :], adjoint(vh) * keep[..., None, :].astype(a.dtype)


@pinv_factors.defjvp
def _pinv_factors_jvp(primals, tangents):
    a, rcond = primals
    da, _ = tangents  # the cutoff ratio carries no derivative: the rank is held fixed
    p, v = pinv_factors(a, rcond)  # recursive: outer transformations see this rule again
    da_v = matmul(da, v)
    dah_p = matmul(adjoint(da), p)
    dv = dah_p - matmul(v, matmul(adjoint(v), dah_p))
    outside = da_v - matmul(a, _pinv(p, v, da_v))  # (I - A A^+) dA V
    dp = matmul(outside, matmul(adjoint(p), p)) - matmul(p, matmul(adjoint(v), dah_p))
    return (p, v), (dp, dv)


@jax.custom_jvp
def solve(a: jax.Array, b: jax.Array, rcond: jax.Array) -> jax.Array:
    """x = A^+ b for a (..., M, N) and b (..., M, K); batch dimensions broadcast."""
    p, v = pinv_factors(a, rcond)
    return _pinv(p, v, b)


@solve.defjvp
def _solve_jvp(primals, tangents):
    a, b, rcond = primals
    da, db, _ = tangents
    p, v = pinv_factors(a, rcond)
    x = _pinv(p, v, b)
    r = b - matmul(a, x)
    z = matmul(adjoint(da), _pinv_h(p, v, x))
    inner = db - matmul(da, x) + _pinv_h(p, v, matmul(adjoint(da), r))
    dx = _pinv(p, v, inner) + z - matmul(v, matmul(adjoint(v), z))
    return x, dx


@jax.custom_jvp
def singular_values(a: jax.Array) -> jax.Array:
    """All min(M, N) singular values of a, descending."""
    return svd(a)[1]


@singular_values.defjvp
def _singular_values_jvp(primals, tangents):
    # ds_i = Re(u_i^H dA v_i), exact to first order also where singular values repeat.
    (a,), (da,) = primals, tangents
    u, s, vh = svd(a)
    ds = jnp.real(jnp.sum(jnp.conj(u) * matmul(da, adjoint(vh)), axis=-2))
    return s, ds.astype(s.dtype)
