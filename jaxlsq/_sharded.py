r"""Least squares for one tall problem whose rows are spread over a device mesh (TSQR).

Each device factors its row block, A_i = Q_i R_i, and forms Q_i^H b_i; the small factors are
gathered (all_gather: P (N^2 + N K) numbers cross devices, never the rows), and every device
solves the stacked problem [R_1; ...; R_P] x = [Q_1^H b_1; ...; Q_P^H b_P] with jaxlsq's own SVD
solve (Demmel, Grigori, Hoemmen & Langou 2012). Since diag(Q_i) has orthonormal columns, the
stacked matrix has A's singular values and the stacked problem A's minimum-norm solution. The
residuals are the sum over devices of each block's own (psum).

Derivatives. A custom JVP applies the constant-rank rule of _svd_solve to the row-sharded A
through the pair (V, Z = V S^{-2}) of the stacked factor: every product that contracts rows,
A^H y, is a local product followed by psum, and products A w stay local; the singular values'
derivative Re(u_i^H dA v_i) takes u_i = A v_i / s_i the same way. First order, forward and
reverse. Outer derivatives of the rule go through JAX's own QR and SVD rules, so second order is
correct only where those are (full-rank blocks, distinct singular values) and is not tested.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from . import _validate
from ._factor import Basis, Factor, adjoint, matmul
from ._lstsq import LstsqResult, _squared_norms, lstsq
from ._scaling import largest, scaled_back, unit_scale
from ._svd_solve import _apply_pinv, _kept_power, rank_of

# jax.shard_map in newer JAX, jax.experimental.shard_map before. The outputs are replicated by
# construction (all_gather and psum), which the replication check cannot see through the
# custom JVP, so it is turned off (its keyword changed name between versions).
if hasattr(jax, "shard_map"):
    _shard_map = partial(jax.shard_map, check_vma=False)
else:  # pragma: no cover - depends on the JAX version
    from jax.experimental.shard_map import shard_map as _experimental_shard_map

    _shard_map = partial(_experimental_shard_map, check_rep=False)


def _stacked_factor(a, b, axis):
    """The gathered small problem: R stacked (P n, N), Q^H b stacked (P n, K), n = min(rows, N)."""
    n = a.shape[-1]
    # R of [A_i, b_i] holds R_i in its leading N x N block and Q_i^H b_i beside it: Q_i is
    # never formed.
    both = jnp.linalg.qr(jnp.concatenate([a, b], axis=-1), mode="r")
    if both.shape[0] < n:  # fewer rows than columns on this device: pad with zero rows
        both = jnp.pad(both, ((0, n - both.shape[0]), (0, 0)))
    r, qhb = both[:n, :n], both[:n, n:]
    stack = lambda x: lax.all_gather(x, axis).reshape(-1, x.shape[-1])  # noqa: E731
    return stack(r), stack(qhb)


def _solve_blocks(a, b, rcond, axis):
    """x, singular values (replicated) of the row-sharded problem, from the stacked factors."""
    r, qhb = _stacked_factor(a, b, axis)
    u, s, vh = jnp.linalg.svd(r, full_matrices=False)
    f = Factor(Basis(u), s, Basis(adjoint(vh)))
    return _apply_pinv(f, rcond, qhb), s, f.right.u


def _make_solve(axis):
    @jax.custom_jvp
    def solve(a, b, rcond):
        """x and the singular values from one factorization."""
        return _solve_blocks(a, b, rcond, axis)[:2]

    @solve.defjvp
    def _solve_jvp(primals, tangents):
        a, b, rcond = primals
        da, db, _ = tangents
        x, s, v = _solve_blocks(a, b, rcond, axis)
        # ds_i = Re(u_i^H dA v_i) with u_i = A v_i / s_i, summed over the rows (JAX's SVD rule
        # at distinct values); 0 for the values the cutoff drops, which the rule holds at zero
        ds = lax.psum(jnp.sum(jnp.real(jnp.conj(matmul(a, v)) * matmul(da, v)), axis=0), axis)
        ds = ds * _kept_power(s, rcond, -1, s.dtype)
        keep = _kept_power(s, rcond, 0, a.dtype)
        v, z = v * keep, v * _kept_power(s, rcond, -2, a.dtype)
        rows_h = lambda y: lax.psum(matmul(adjoint(a), y), axis)  # noqa: E731  A^H y, summed
        pinv = lambda y: matmul(v, matmul(adjoint(z), rows_h(y)))  # noqa: E731  A^+ y
        pinv_h = lambda w: matmul(a, matmul(z, matmul(adjoint(v), w)))  # noqa: E731  A^+H w
        r = b - matmul(a, x)
        dah = lambda y: lax.psum(matmul(adjoint(da), y), axis)  # noqa: E731  dA^H y, summed
        inner = db - matmul(da, x) + pinv_h(dah(r))
        z_x = dah(pinv_h(x))
        dx = pinv(inner) + z_x - matmul(v, matmul(adjoint(v), z_x))
        return (x, s), (dx, ds)

    return solve


def sharded_lstsq(
    a: ArrayLike, b: ArrayLike, *, mesh: Mesh, axis_name: str, rcond: ArrayLike | None = None
) -> LstsqResult:
    r"""The minimum-norm least-squares solution of a tall ``a @ x = b`` whose rows are sharded.

    Same answer as :func:`jaxlsq.lstsq` (``x``, ``residuals``, ``rank``, ``singular_values``),
    computed without gathering the rows: each device QR-factors its row block, only the small
    ``N x N`` factors and ``N x K`` projections cross devices, and every device takes the SVD of
    the stacked factors (TSQR). Differentiable (first order, forward and reverse) in ``a`` and
    ``b`` by the same constant-rank rule, with the row sums done by ``psum``; the singular
    values by ``Re(u_i^H dA v_i)``, 0 at a value the cutoff drops.

    Args:
      a: ``(M, N)``; its rows are split over ``mesh``'s ``axis_name`` (it is placed that way if
        it is not already). ``M`` must be divisible by the number of devices on that axis.
      b: ``(M,)`` or ``(M, K)``, split the same way.
      mesh: a :class:`jax.sharding.Mesh`.
      axis_name: the mesh axis the rows are split over.
      rcond: as for :func:`jaxlsq.lstsq`.

    Returns:
      :class:`jaxlsq.LstsqResult`; ``x``, ``rank`` and ``singular_values`` replicated.

    Raises:
      ValueError: ``a`` not 2-D, ``M`` not divisible by the devices on ``axis_name``, an unknown
        ``axis_name``, or the shape errors of :func:`jaxlsq.lstsq`.

    Notes:
      Communication: one ``all_gather`` of ``P (N^2 + N K)`` numbers for the solve, and
      ``psum`` of ``N K``-sized blocks in the derivative. Second derivatives go through JAX's
      QR and SVD rules inside the first-order rule: right only where those are (full-rank
      blocks, distinct singular values), NaN or wrong elsewhere, and not tested.
      Leading batch dimensions are not taken here (shard a batch of problems with
      :func:`jaxlsq.lstsq` instead); under ``vmap`` each mapped problem's rows are split.

    References:
      J. Demmel, L. Grigori, M. Hoemmen and J. Langou, "Communication-optimal parallel and
      sequential QR and LU factorizations", SIAM J. Sci. Comput. 34(1), 2012.
    """
    func = "jaxlsq.sharded_lstsq"
    plan = _validate.plan_lstsq(a, b, func, stacks=False)
    held = _validate.held(a, b)  # constants of an outer jit (see unfolded)
    _validate.check_rcond(rcond, func)
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"{func}: mesh must be a jax.sharding.Mesh; got {type(mesh).__name__}. Build one "
            "over the devices the rows go to, e.g. jax.sharding.Mesh(jax.devices(), ('rows',))."
        )
    for name, x in (("a", plan.a), ("b", plan.b)):
        if x.ndim != 2:
            want = "one matrix (M, N)" if name == "a" else "a vector (M,) or a matrix (M, K)"
            raise ValueError(
                f"{func}: {name} must be {want}; got shape {np.shape(a if name == 'a' else b)}. "
                + _validate.ONE_PROBLEM
            )
    if not isinstance(axis_name, str) or axis_name not in mesh.axis_names:
        raise ValueError(
            f"{func}: axis_name must be the name (a string) of one axis of the mesh, one of "
            f"{mesh.axis_names}; got {axis_name!r}. The rows are split over that one axis."
        )
    m, n = plan.a.shape
    if m == 0 or n == 0:  # nothing to split: lstsq's empty answer (x = 0, rank 0)
        return lstsq(a, b, rcond)
    devices = mesh.shape[axis_name]
    if m % devices:
        raise ValueError(
            f"{func}: a has {m} rows, which do not split evenly over the {devices} devices of "
            f"mesh axis {axis_name!r}; pad a and b with zero rows to a multiple of {devices} "
            "(zero rows change neither x nor the residuals)."
        )
    rcond_eff = _validate.effective_rcond(rcond, plan.dtype, plan.compute_dtype, m, n)
    rows = NamedSharding(mesh, P(axis_name))
    # a sharding constraint rather than device_put: under vmap its batching rule leaves the
    # mapped axis whole and splits the rows
    a_s = lax.with_sharding_constraint(plan.a, rows)
    b_s = lax.with_sharding_constraint(_validate.some_column(plan.b), rows)
    x, residuals, rank, s = _sharded_core(a_s, b_s, rcond_eff, mesh, axis_name, held)
    k = plan.b.shape[-1]
    x, residuals = x[..., :k].astype(plan.dtype), residuals[..., :k]
    if plan.b_is_vector:
        x = x[..., 0]
    real = jnp.finfo(plan.dtype).dtype
    s = s[: min(m, n)]  # M < N: the stacked factor's extra values are the padding's zeros
    return LstsqResult(x, residuals.astype(real), rank, s.astype(real))


@partial(jax.jit, static_argnames=("mesh", "axis_name", "held"))
def _sharded_core(a, b, rcond, mesh, axis_name, held):
    a, b = (_validate.unfolded(x, c) for x, c in zip((a, b), held, strict=True))
    solve = _make_solve(axis_name)

    def per_device(a, b, rcond):
        finite = jnp.all(lax.psum(jnp.sum(~jnp.isfinite(a)), axis_name) == 0)
        finite_b = lax.psum(jnp.sum(~jnp.isfinite(b), axis=0), axis_name) == 0  # (K,)
        # The rule's (A^H A)^+ ~ 1/s^2 over- or underflows once s lies beyond the square root of
        # the range: it takes the problem scaled by powers of two, a's largest entry (over every
        # device) to [1/2, 1), as _svd_solve.unit does (exact; x and its tangent are the same).
        # The largest entries of the given a and b (1 where they are not finite): from the
        # zeroed copies below XLA kept a whole transposed copy of a (1.2x the time, 2**22 x 64)
        a_scale = unit_scale(lax.pmax(largest(a), axis_name), always=True)
        b_scale = unit_scale(lax.pmax(largest(b), axis_name), to_edge=True)
        a = _validate.zero_unless(a, jnp.isfinite(a))  # NaN derivatives where not finite
        b = _validate.zero_unless(b, jnp.isfinite(b))
        # x and the values from one factorization of the scaled rows (the values of the unscaled
        # rows took a second QR and SVD: 1.56x the time on one device, 2**22 x 64)
        x, s = solve(a * a_scale, b * b_scale, rcond)
        x = scaled_back(x, a_scale, b_scale)
        r = b - matmul(a, x)
        residuals = lax.psum(_squared_norms(r), axis_name)
        rank = rank_of(s, rcond)
        s = s / a_scale
        ok = finite & finite_b & jnp.isfinite(rcond)  # a traced non-finite rcond: all NaN
        x = x * _validate.nan_unless(ok)[None, :]  # multiplied: see _lstsq_core
        residuals = residuals * _validate.nan_unless(ok)
        s = s * _validate.nan_unless(finite)
        return x, residuals, jnp.where(finite, rank, 0), s

    mapped = _shard_map(
        per_device,
        mesh=mesh,
        in_specs=(P(axis_name), P(axis_name), P()),
        out_specs=(P(), P(), P(), P()),
    )
    return mapped(a, b, rcond)
