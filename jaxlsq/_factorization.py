"""factorize(): a differentiable factorization to keep, and solve with many times."""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from . import _validate
from ._factor import Factor, adjoint
from ._factor import factorize as _factor
from ._svd_solve import factored_ridge_solve, rank_of, singular_values_of


class Factorization(NamedTuple):
    """The SVD of ``a`` in factored form, from :func:`jaxlsq.factorize`; a pytree.

    It can be returned from and passed into ``jit``-compiled functions, stacked by ``vmap`` and
    differentiated: derivatives reach ``a`` through the same constant-rank rules as
    :func:`jaxlsq.lstsq`. Create it with :func:`jaxlsq.factorize`, not directly.
    """

    a: jax.Array  # (..., M, N), the compute dtype; non-finite entries replaced by 0
    factor: Factor  # a = left diag(s) right^H, both bases explicit; no derivative (a has it)
    rcond: jax.Array  # the effective cut-off ratio
    finite: jax.Array  # (...) bool: a held only finite numbers

    def solve(self, b: ArrayLike, *, l2_regularizer: ArrayLike | None = None) -> jax.Array:
        """The minimum-norm least-squares solution ``x`` of ``a x = b`` (ridge with ``lam``).

        Args:
          b: shape ``(M,)`` or ``(..., M, K)``, as for :func:`jaxlsq.lstsq`.
          l2_regularizer: ``lam >= 0`` as for :func:`jaxlsq.lstsq`; ``None`` means 0.

        Returns:
          ``x`` of shape ``(..., N)`` for a vector ``b``, ``(..., N, K)`` otherwise.
        """
        return self._solve(
            self.a, self.factor, b, l2_regularizer, "jaxlsq.Factorization.solve", ("a", "b")
        )

    def solve_adjoint(self, c: ArrayLike) -> jax.Array:
        """``pinv(a^H) @ c`` for ``c`` of shape ``(N,)`` or ``(..., N, K)``: the minimum-norm
        least-squares solution of ``a^H y = c``, from the same factorization."""
        f = self.factor
        return self._solve(
            adjoint(self.a),
            Factor(f.right, f.s, f.left),  # a^H = right diag(s) left^H
            c,
            None,
            "jaxlsq.Factorization.solve_adjoint",
            ("a^H", "c"),
        )

    @property
    def singular_values(self) -> jax.Array:
        """All ``min(M, N)`` singular values, descending (NaN where ``a`` was not finite)."""
        s = singular_values_of(self.a, self.factor.s)
        return s * _validate.nan_unless(self.finite)[..., None]

    @property
    def rank(self) -> jax.Array:
        """The number of singular values above the cutoff, int32 (0 where ``a`` was not finite,
        or where a traced ``rcond`` was not)."""
        rank = rank_of(self.factor.s, self.rcond)
        return jnp.where(self.finite, rank, 0)

    def _solve(self, a, factor, b, lam, func, names):
        plan = _validate.plan_lstsq(a, b, func, names)
        lam_given, lam = lam, _validate.check_l2_regularizer(lam, plan, func)
        _validate.batch_with(plan, func, lam, None)  # a clear error where lam does not broadcast
        held = _validate.held(a, b, lam_given)  # constants of an outer jit (see unfolded)
        held = (*held, any(_validate.held(*jax.tree.leaves(factor))))
        lam = jnp.zeros((), jnp.finfo(a.dtype).dtype) if lam is None else lam
        if jnp.iscomplexobj(plan.b) and not jnp.iscomplexobj(a):
            raise TypeError(
                f"{func}: {names[1]} is complex ({plan.b.dtype}) but the factored matrix is "
                f"real ({a.dtype}); solve the real and imaginary parts of {names[1]} separately, "
                "or factor a complex matrix."
            )
        b = plan.b.astype(a.dtype)
        x = _solve_core(a, factor, b, lam, self.rcond, self.finite, held)
        return x[..., 0] if plan.b_is_vector else x


@partial(jax.jit, inline=True, static_argnames="held")
def _solve_core(a, factor, b, lam, rcond, finite, held):
    """Factorization.solve's arrays; held: whether a, b, lam and the factors held values in the
    caller (see _validate.unfolded)."""
    a, b, lam = (_validate.unfolded(v, c) for v, c in zip((a, b, lam), held[:3], strict=True))
    factor, rcond, finite = _validate.unfolded((factor, rcond, finite), held[3])
    valid = jnp.isfinite(lam) & (lam >= 0) & jnp.isfinite(rcond)
    finite_b = jnp.all(jnp.isfinite(b), axis=-2)
    b = _validate.zero_unless(b, finite_b[..., None, :])
    x = factored_ridge_solve(a, factor, b, rcond, jnp.where(valid, lam, 0))
    ok = (finite & valid)[..., None] & finite_b
    return x * _validate.nan_unless(ok)[..., None, :]


def factorize(a: ArrayLike, rcond: ArrayLike | None = None) -> Factorization:
    r"""Factor ``a`` once (its SVD, through QR for tall and wide ``a``) to solve with it many times.

    ``jaxlsq.factorize(a).solve(b)`` equals ``jaxlsq.lstsq(a, b).x`` for ``b`` of ``a``'s dtype
    (``solve`` returns the factorization's compute dtype, float32 for float16 and bfloat16 input,
    as do ``singular_values``, and refuses complex ``b`` for a real ``a``); keeping the
    factorization makes every further ``solve`` (or ``solve_adjoint``) cost ``O(M N K)`` instead
    of a new factorization. The result is a pytree: return it from ``jit``, pass it into ``jit``,
    ``vmap`` over it, and differentiate through it.

    Args:
      a: matrix of shape ``(M, N)`` or a batch ``(..., M, N)``.
      rcond: the cut-off ratio, as for :func:`jaxlsq.lstsq` (``None``: ``eps * max(M, N)``).

    Returns:
      A :class:`Factorization` with ``solve(b, *, l2_regularizer=None)``, ``solve_adjoint(c)``,
      ``rank`` and ``singular_values``.

    Notes:
      Derivatives with respect to ``a`` follow the same constant-rank rules as
      :func:`jaxlsq.lstsq` (first and higher order). The rules build their factor pairs from
      the stored factors, so a differentiated solve, also in a later ``jit`` than
      ``factorize``, factors ``a`` no second time. Float16 and
      bfloat16 are solved in float32. Non-finite entries in ``a`` make every output NaN (rank 0),
      and their derivatives NaN too.

    Example:
      >>> import jax.numpy as jnp, jaxlsq
      >>> f = jaxlsq.factorize(jnp.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]))
      >>> f.solve(jnp.array([1.0, 4.0, 5.0])).tolist(), int(f.rank)
      ([1.0, 2.0], 2)
    """
    func = "jaxlsq.factorize"
    a_given, a = a, _validate.as_matrix(a, func)
    held = _validate.held(a_given)[0]  # a constant of an outer jit (see unfolded)
    _validate.check_rcond(rcond, func)
    dtype = _validate.result_dtype(a)
    work = _validate.compute_dtype(dtype)
    a = a.astype(work)
    m, n = a.shape[-2:]
    if m == 0 or n == 0:
        raise ValueError(
            f"{func}: a has shape {a.shape}, with no rows or no columns; there is nothing to "
            "factor. Use jaxlsq.lstsq, which handles empty problems."
        )
    rcond_eff = _validate.effective_rcond(rcond, dtype, work, m, n)
    return _factorize_core(a, rcond_eff, held)


@partial(jax.jit, inline=True, static_argnames="held")
def _factorize_core(a: jax.Array, rcond_eff: jax.Array, held: bool) -> Factorization:
    """factorize's arrays; held: whether a held values in the caller (see _validate.unfolded)."""
    a = _validate.unfolded(a, held)
    finite = jnp.all(jnp.isfinite(a), axis=(-2, -1))
    a = _validate.zero_unless(a, finite[..., None, None])
    rcond_eff = jnp.broadcast_to(rcond_eff, finite.shape)  # per problem, so vmap can stack it
    f = _factor(lax.stop_gradient(a))
    # Q U (or Q V for a wide a) formed once: each solve is then O(M N K) matrix products
    f = Factor(f.left.explicit(), f.s, f.right.explicit())
    return Factorization(a, f, rcond_eff, finite)
