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
derivative too. Raw SVD factors do not: their derivative divides by s_i^2 - s_j^2. The rule
therefore reads A^+ through the factor triple (U, W, V) with A^+ = V W U^H, where U (M x k) and
V (N x k) hold the kept singular vectors (dropped columns zeroed) and W = diag(1/s) starts out
diagonal but is a full k x k matrix. That representation has a large gauge freedom
(U -> U Q, V -> V R, W -> R^H W Q for unitary Q, R), and the tangent

    dW = -W J W,   J = U^H dA V,
    dU = (I - U U^H) dA V W,
    dV = (I - V V^H) dA^H U W^H,

reproduces dA^+, dP = d(V V^H) and d(U U^H) exactly (expand dV W U^H + V dW U^H + V W dU^H and
compare with dA^+ above) with no division by differences of singular values. Every quantity the
rules build from the triple is gauge invariant, so second derivatives come out right even where
singular values repeat or vanish (the rule calls itself, so higher orders follow the same way).
Only second-order work pays for these dense O(M N k) tangents; first-order work stays O(M N K).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._factor import adjoint, matmul, svd


def keep_mask(s: jax.Array, rcond: jax.Array) -> jax.Array:
    """Singular values kept by LAPACK's rule: s_i > rcond * s_max (s sorted, descending)."""
    return s > rcond * s[..., :1]


def _apply(u: jax.Array, w: jax.Array, v: jax.Array, y: jax.Array) -> jax.Array:
    """A^+ y = V W U^H y."""
    return matmul(v, matmul(w, matmul(adjoint(u), y)))


def _apply_adjoint(u: jax.Array, w: jax.Array, v: jax.Array, z: jax.Array) -> jax.Array:
    """A^{+H} z = U W^H V^H z."""
    return matmul(u, matmul(adjoint(w), matmul(adjoint(v), z)))


@jax.custom_jvp
def pinv_factors(a: jax.Array, rcond: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The factor triple (U, W, V) of A^+ = V W U^H (see the module docstring).

    rcond is the effective cutoff ratio (already resolved from None or out-of-range values).
    """
    u, s, vh = svd(a)
    keep = keep_mask(s, rcond)
    s_inv = jnp.where(keep, 1 / jnp.where(keep, s, 1), 0)
    cols = keep[..., None, :].astype(a.dtype)
    w = s_inv[..., :, None] * jnp.eye(s.shape[-1], dtype=s.dtype)
    return u * cols, w.astype(a.dtype), adjoint(vh) * cols


@pinv_factors.defjvp
def _pinv_factors_jvp(primals, tangents):
    a, rcond = primals
    da, _ = tangents  # the cutoff ratio carries no derivative: the rank is held fixed
    u, w, v = pinv_factors(a, rcond)  # recursive: outer transformations see this rule again
    da_v = matmul(da, v)
    j = matmul(adjoint(u), da_v)
    dw = -matmul(w, matmul(j, w))
    du = matmul(da_v - matmul(u, j), w)
    dah_u = matmul(adjoint(da), u)
    dv = matmul(dah_u - matmul(v, matmul(adjoint(v), dah_u)), adjoint(w))
    return (u, w, v), (du, dw, dv)


@jax.custom_jvp
def solve(a: jax.Array, b: jax.Array, rcond: jax.Array) -> jax.Array:
    """x = A^+ b for a (..., M, N) and b (..., M, K); batch dimensions broadcast."""
    u, w, v = pinv_factors(a, rcond)
    return _apply(u, w, v, b)


@solve.defjvp
def _solve_jvp(primals, tangents):
    a, b, rcond = primals
    da, db, _ = tangents
    u, w, v = pinv_factors(a, rcond)
    x = _apply(u, w, v, b)
    r = b - matmul(a, x)
    z = matmul(adjoint(da), _apply_adjoint(u, w, v, x))
    inner = db - matmul(da, x) + _apply_adjoint(u, w, v, matmul(adjoint(da), r))
    dx = _apply(u, w, v, inner) + z - matmul(v, matmul(adjoint(v), z))
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
