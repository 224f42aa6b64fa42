"""The public least-squares solver: validate, promote, dispatch to the SVD solve."""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from . import _validate
from ._factor import invariant_like, matmul, squared_norms
from ._full_rank import pinv_solve
from ._methods import cholesky_solve, qr_solve, weighted_qr_solve
from ._scaling import extent, regularized, scaled_back, scales
from ._svd_solve import (
    rank_of,
    ridge_solve,
    singular_values,
    singular_values_of,
    vmapped_copies,
    weighted_solve,
)


class LstsqResult(NamedTuple):
    """Result of :func:`jaxlsq.lstsq`; unpacks like the tuple of ``numpy.linalg.lstsq``.

    Attributes:
      x: the minimum-norm least-squares solution, shape ``(..., N)`` or ``(..., N, K)``.
      residuals: squared 2-norm of each column of ``b - a @ x``, shape ``(..., 1)`` for a
        vector ``b`` and ``(..., K)`` otherwise (NumPy's empty array only with
        ``numpy_resid=True``).
      rank: the number of singular values above the cutoff, int32, shape ``(...)``.
      singular_values: all ``min(M, N)`` singular values of ``a``, descending, shape
        ``(..., min(M, N))``.
    """

    x: jax.Array
    residuals: jax.Array
    rank: jax.Array
    singular_values: jax.Array


def lstsq(
    a: ArrayLike,
    b: ArrayLike,
    rcond: ArrayLike | None = None,
    *,
    l2_regularizer: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    method: str = "svd",
    numpy_resid: bool = False,
) -> LstsqResult:
    r"""Minimum-norm least-squares solution of ``a @ x = b``, differentiable at any rank.

    A drop-in replacement for :func:`numpy.linalg.lstsq` and :func:`jax.numpy.linalg.lstsq`
    that works under ``jit``, ``vmap``, ``grad``, ``jvp`` and ``hessian``, whose derivatives stay
    finite and correct for orthonormal, rank-deficient and zero matrices.

    Args:
      a: coefficient matrix of shape ``(M, N)``, or a batch ``(..., M, N)``.
      b: right-hand side of shape ``(M,)`` (one vector), ``(M, K)`` or ``(..., M, K)``. ``b`` is a
        single vector only when ``b.ndim == 1``; batch dimensions of ``a`` and ``b`` broadcast.
      rcond: cut-off ratio for small singular values: ``s_i <= rcond * s_max`` are treated as
        zero. ``None`` (the default) means ``eps * max(M, N)`` with ``eps`` the machine epsilon
        of the input dtype (NumPy solves float32 input in float64 and takes float64's eps, so a
        float32 rank can differ from NumPy's; jax.numpy keeps the input's eps too). Following
        LAPACK's ``gelsd`` (which NumPy calls), a finite value ``<= 0`` or ``>= 1`` means
        ``eps / 2``. NaN or inf raises; under ``jit``, where it cannot, ``x`` and ``residuals``
        are NaN and ``rank`` is 0. May be a traced scalar under ``jit``; changing it does not
        recompile.
      l2_regularizer: ``lam >= 0`` for ridge (Tikhonov) regression: ``x`` minimizes
        ``||a x - b||^2 + lam ||x||^2`` over the singular directions that ``rcond`` keeps, through
        the filter factors ``s / (s^2 + lam)``. ``None`` (the default) and ``0`` give the plain
        minimum-norm solution (``0`` with the same rank, and the same outputs to rounding:
        the plain solve may take a faster route). A scalar, or an array that broadcasts against
        the batch dimensions (one ``lam`` per problem, or many ``lam`` for one matrix: a
        regularization path from one SVD). May be traced and is differentiable. Negative or
        non-finite values raise where the value is known and give NaN in ``x`` and
        ``residuals`` under ``jit``.
      weights: row weights ``w >= 0`` of shape ``(..., M)``: ``x`` minimizes
        ``sum_i w_i |a_i x - b_i|^2`` (plus the ridge term), i.e. the problem of
        ``(sqrt(w) a, sqrt(w) b)``. A zero weight drops its row exactly; ``rank`` and
        ``singular_values`` are those of ``sqrt(w) a`` and ``residuals`` the weighted ones,
        ``sum_i w_i |b_i - a_i x|^2``. Batch dimensions broadcast like ``a``'s. Differentiable in
        ``w`` at any ``w >= 0`` (first order; except ``method="cholesky"`` on a wide ``a`` with
        ``l2_regularizer``, whose derivative in a zero weight is NaN; second order through ``w``,
        and the derivative of ``singular_values`` in ``w``, need all ``w > 0`` and are NaN, not
        wrong, where a weight is exactly 0). Negative or non-finite weights raise where the
        value is known and make that problem's outputs NaN (rank 0) under ``jit``.
      method: ``"svd"`` (the default: any rank, NumPy's semantics), ``"qr"`` (Householder QR of
        ``a``, or of ``a^H`` when wide: full column or row rank assumed, the minimum-norm answer)
        or ``"cholesky"`` (the normal equations: full rank and ``eps * cond(a)^2 <= 1e-3``
        assumed; ridge allowed; ``rcond`` is not used, its own check decides). Both are faster
        than the SVD and differentiate correctly under their assumption (in the weights too, at
        zero weights of a tall ``a``). They check it on their own factor; where it fails ``x`` and
        ``residuals`` are NaN (and so are their derivatives), never a finite wrong answer. They
        compute no singular values (``singular_values`` is NaN, its derivatives too) and report
        ``rank`` as ``min(M, N)`` where the check passes and an estimate below it where it fails
        (see ``jaxlsq._methods``). ``"qr"`` takes no ``l2_regularizer``.
      numpy_resid: if True, return residuals exactly as NumPy does: an empty array when the rank
        is below ``N`` or ``M <= N``. That shape depends on values, so it works only outside
        ``jit``/``vmap``/``grad`` and for unbatched ``a``.

    Returns:
      :class:`LstsqResult` ``(x, residuals, rank, singular_values)``. ``x`` and ``residuals``
      have the promoted input dtype (``residuals`` and ``singular_values`` its real part).

    Raises:
      ValueError: wrong number of dimensions, rows of ``a`` and ``b`` that differ, batch
        dimensions that do not broadcast, ``rcond`` not a scalar, or ``numpy_resid=True`` where
        values are not known.
      TypeError: a non-numeric ``a``, ``b`` or ``rcond``.

    Notes:
      The solution is :math:`x = A^+ b = V \Sigma^+ U^H b` from the thin SVD
      :math:`A = U \Sigma V^H`, with :math:`\Sigma^+` inverting the kept singular values. As in
      LAPACK's ``gelsd``, a tall ``a`` (``M >= 2N``) is first reduced by Householder QR,
      :math:`A = QR`, and only the ``N x N`` factor ``R`` goes through the SVD (a wide one through
      :math:`A^H`); ``Q`` is applied through its reflectors, never formed. Where a bound from
      :math:`R^{-1}` proves that the cutoff keeps every singular value (for one matrix, also where
      the singular values of ``R`` alone show it), ``x`` comes from ``R`` by a triangular solve
      (:math:`x = R^{-1} Q^H b`, or :math:`x = Q R^{-H} b` when wide), and the SVD vectors are
      computed only where the rank may be lower. A batch (leading dimensions or ``vmap``) takes
      one such decision for all its problems. Both branches give NumPy's rank, singular values
      and ``x`` (to rounding) and the same derivatives. Like ``gelsd``, a matrix whose largest
      entry lies outside about [1e-31, 1e31] (float32; [1e-292, 1e292] in float64) is scaled
      into that range by a power of two, and ``b`` likewise, exactly; with ``l2_regularizer``
      only the factorization is.

      Derivatives (forward, reverse and higher order) come from custom JVP rules, not from
      differentiating the SVD. For ``x`` they implement the constant-rank derivative of the
      pseudo-inverse (Golub & Pereyra 1973), with :math:`r = b - A x`:

      .. math::

         dx = A^+ (db - dA\,x) + A^+ A^{+H} dA^H r + (I - A^+ A)\, dA^H A^{+H} x.

      The rank is the one fixed by the ``rcond`` cutoff at the evaluation point. Where a
      perturbation would change the rank (a singular value at or near the cutoff moving across
      it, or a zero singular value becoming nonzero), :math:`A^+` is discontinuous and no
      derivative exists; the returned derivative is then the one of the constant-rank
      extension: dropped singular directions stay dropped, which is the derivative along every
      rank-preserving perturbation and a finite, well-defined choice for the others. The rule
      treats the dropped values as zero, so it is exact where they are (an exactly rank-deficient
      ``a``, or values at rounding level, which is what the default ``rcond`` drops). Where a
      larger ``rcond`` drops values that are not small (truncated-SVD regularization), ``x`` is
      the smooth truncated solution :math:`V_k \Sigma_k^{-1} U_k^H b`, whose exact derivative
      has further terms, of relative size up to about ``s_dropped / (s_kept - s_dropped)``, that
      the rule leaves out (``jnp.linalg.pinv``'s rule does the same). For the same reason the
      second derivative at an exactly rank-deficient ``a`` is exact along rank-preserving
      directions but not symmetric along directions that lift a zero value. The residuals'
      derivative follows by the chain rule. Singular values use
      :math:`ds_i = \mathrm{Re}(u_i^H\, dA\, v_i)`: their derivative where values are distinct and
      nonzero; where values repeat only directional derivatives exist, and the rule is exact for
      symmetric functions of a repeated group (its sum, its sum of squares); at a zero value (a
      kink, like :math:`|t|`) it is the finite slope of the signed branch. Their second
      derivatives follow JAX's SVD rule and exist only where values are distinct (NaN where two
      are exactly equal or one is exactly 0, an error of about ``eps`` over the relative gap
      where two are close). At a rank-deficient ``a`` whose zero values are at rounding level,
      functions of the squared values (``sum(s**2)``) get their Hessian, while a function with
      a kink at a zero value (``sum(s)``) has none there (README, "The derivative rule and its
      assumption").
      For one right-hand side the first-order work is :math:`O(MNK)` beyond the one factorization;
      second-order work adds dense factor tangents of :math:`O(MN\min(M, N))`.

      With ``l2_regularizer=lam`` the solution is :math:`x = V D \Sigma U^H b`,
      :math:`D = (\Sigma^2 + \lambda)^{-1}` over the kept values, and its derivative (in
      :math:`A`, :math:`b` and :math:`\lambda`, at constant rank) is

      .. math::

         dx = V D V^H (dA^H r - A^H dA\,x + A^H db - d\lambda\,x) + (I - V V^H)\, dA^H U D U^H b,

      which is the rule above at :math:`\lambda = 0`. It holds the rank like that rule: where a
      perturbation lifts a zero singular value, the unrestricted ridge solution
      :math:`(A^H A + \lambda)^{-1} A^H b` would also move by
      :math:`(I - V V^H) dA^H (I - U U^H) b / \lambda`, which this derivative leaves out. The
      residuals are :math:`\|b - A x\|^2`, without the penalty; ``rank`` and
      ``singular_values`` are those of ``a`` (with ``method="svd"``; the other methods report
      their own rank estimate, see ``method``).

      With ``weights`` the same rules apply to :math:`W^{1/2} A` and :math:`W^{1/2} b`, except for
      the derivative in :math:`w`, taken from the weighted normal equations so that it stays
      finite at zero weights: :math:`dx_w = (A^H W A + \lambda)^+ A^H dW\, r` over the kept
      directions, with the unweighted residual :math:`r = b - A x`.

      Differences from :func:`numpy.linalg.lstsq`: residuals are always returned (NumPy returns
      an empty array when the rank is below ``N`` or ``M <= N``; pass ``numpy_resid=True`` for
      that); batches are supported; integer and boolean inputs promote like ``jax.numpy``; float16
      and bfloat16 inputs are solved in float32 and returned in their own dtype; NaN or inf in
      ``a`` gives NaN in ``x``, ``residuals`` and ``singular_values`` and rank 0, NaN or inf in a
      column of ``b`` gives NaN in that column of ``x`` and its residual (NumPy raises or returns
      garbage); the derivatives of a NaN output are NaN too, never a finite gradient.
      Differences from :func:`jax.numpy.linalg.lstsq`: the cutoff drops ``s <= rcond * s_max``
      like NumPy (jnp keeps ``s >= rcond * s_max``), ``rcond <= 0`` or
      ``>= 1`` follow LAPACK, ``rank`` is int32 like NumPy, and the derivatives are defined at
      every rank (jnp's are NaN or wrong at repeated or zero singular values).

    References:
      G. H. Golub and V. Pereyra, "The differentiation of pseudo-inverses and nonlinear least
      squares problems whose variables separate", SIAM J. Numer. Anal. 10(2), 1973.
      G. W. Stewart, "On the perturbation of pseudo-inverses, projections and linear least
      squares problems", SIAM Review 19(4), 1977.

    Example:
      >>> import jax.numpy as jnp, jaxlsq
      >>> a = jnp.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [3.0, 1.0]])
      >>> b = jnp.array([-1.0, 0.2, 0.9, 2.1])
      >>> x, residuals, rank, s = jaxlsq.lstsq(a, b)
      >>> [round(float(v), 3) for v in x], int(rank)
      ([1.0, -0.95], 2)
    """
    func = "jaxlsq.lstsq"
    plan = _validate.plan_lstsq(a, b, func)
    _validate.check_rcond(rcond, func)
    lam = _validate.check_l2_regularizer(l2_regularizer, plan, func)
    w = _validate.check_weights(weights, plan, func)
    _validate.check_method(method, lam, func)
    held = _validate.held(a, b, l2_regularizer, weights)  # constants of an outer jit (unfolded)
    batch_shape = _validate.batch_with(plan, func, lam, w)
    if numpy_resid:
        _check_numpy_resid(plan, rcond, lam, w, batch_shape)
    m, n = plan.a.shape[-2:]
    k = plan.b.shape[-1]
    rcond_eff = _validate.effective_rcond(rcond, plan.dtype, plan.compute_dtype, m, n)
    if m == 0 or n == 0:
        x, residuals, rank, s = _empty(plan, rcond_eff, lam, w)
    else:
        b_work = _validate.some_column(plan.b)
        copies = vmapped_copies(plan.a)  # here: under vmap the core is traced one problem at a time
        x, residuals, rank, s = _lstsq_core(plan.a, b_work, rcond_eff, lam, w, method, copies, held)
        x, residuals = x[..., :k], residuals[..., :k]
    x = jnp.broadcast_to(x, (*batch_shape, n, k)).astype(plan.dtype)
    residuals = jnp.broadcast_to(residuals, (*batch_shape, k))
    residuals = residuals.astype(jnp.finfo(plan.dtype).dtype)
    rank = jnp.broadcast_to(rank, batch_shape)
    s = jnp.broadcast_to(s, (*batch_shape, min(m, n))).astype(jnp.finfo(plan.dtype).dtype)
    if plan.b_is_vector:
        x = x[..., 0]
    if numpy_resid and (int(rank) < n or m <= n):
        residuals = jnp.zeros((0,), residuals.dtype)
    return LstsqResult(x, residuals, rank, s)


def _check_numpy_resid(
    plan: _validate.Plan,
    rcond: ArrayLike | None,
    lam: jax.Array | None,
    w: jax.Array | None,
    batch_shape: tuple[int, ...],
) -> None:
    if not _validate.is_concrete(plan.a, plan.b, rcond, lam, w):
        raise ValueError(
            "jaxlsq.lstsq: numpy_resid=True needs concrete values, but was called under a JAX "
            "transformation (jit, vmap, grad, ...), where the residuals' shape cannot depend on "
            "the rank. Use the default numpy_resid=False and select the residuals yourself, e.g. "
            "jnp.where((rank == N) & (M > N), residuals, jnp.nan)."
        )
    if batch_shape:
        raise ValueError(
            f"jaxlsq.lstsq: numpy_resid=True follows numpy.linalg.lstsq, which takes one matrix; "
            f"got a batch of shape {batch_shape}. Use numpy_resid=False and mask the "
            "residuals with rank == N and M > N."
        )


def _empty(
    plan: _validate.Plan, rcond: jax.Array, lam: jax.Array | None, w: jax.Array | None
) -> tuple[jax.Array, ...]:
    """M == 0 or N == 0: x = 0, rank 0, no singular values, residuals ||b||^2 (as NumPy), weighted
    with w; x and residuals NaN where rcond, lam or w is invalid."""
    a, b = plan.a, plan.b
    n = a.shape[-1]
    valid = jnp.isfinite(rcond)
    if w is not None:
        valid = valid & jnp.all(jnp.isfinite(w) & (w >= 0), axis=-1)
    if lam is not None:
        valid = valid & jnp.isfinite(lam) & (lam >= 0)
    scale = _validate.nan_unless(valid)[..., None]  # (..., 1): one factor per problem
    x = jnp.zeros((n, b.shape[-1]), a.dtype) * scale[..., None, :]
    residuals = _squared_norms(b, w) * scale
    rank = jnp.zeros(a.shape[:-2], jnp.int32)
    s = jnp.zeros((*a.shape[:-2], 0), jnp.finfo(a.dtype).dtype)
    return x, residuals, rank, s


def _squared_norms(r: jax.Array, w: jax.Array | None = None) -> jax.Array:
    """Squared 2-norm of each column, smooth at zero (unlike norm(r) ** 2); with row weights
    w (..., M), sum_i w_i |r_i|^2 (rather than |sqrt(w) r|^2: smooth in w at w = 0)."""
    if w is None:
        return squared_norms(r)
    return jnp.sum(w[..., None] * jnp.real(r * jnp.conj(r)), axis=-2)


def _equal_batch_ranks(*pairs) -> list:
    """Each (x, core) as x with leading axes of 1 up to the pairs' most batch dimensions (x.ndim
    - core); None stays None."""
    rank = max(x.ndim - core for x, core in pairs if x is not None)
    return [
        None if x is None else x.reshape((1,) * (rank + core - x.ndim) + x.shape)
        for x, core in pairs
    ]


@partial(jax.jit, inline=True, static_argnames=("method", "copies", "held"))
def _lstsq_core(
    a: jax.Array,
    b: jax.Array,
    rcond: jax.Array,
    lam: jax.Array | None,
    w: jax.Array | None,
    method: str,
    copies: int = 1,
    held: tuple[bool, ...] = (False,) * 4,
) -> tuple[jax.Array, ...]:
    """Solve on a's own batch shape; b's batch dimensions broadcast through the products.
    copies: how many copies of a the vmaps around lstsq hold (see _svd_solve.paired_solve).
    held: which of a, b, lam and w held values in the caller (_validate.held, unfolded).

    Non-finite entries are replaced by zeros before the factorizations (LAPACK may misbehave on
    them) and the affected outputs are multiplied by NaN afterwards; both steps make the
    derivatives NaN there too (a select would pass zeros, a finite gradient of a NaN). The plain
    solve's derivative and the residuals take the given a, not the masked copy: a non-finite a
    then makes their products NaN by itself, and XLA need not keep a masked copy of an M x N
    matrix in each layout its products want.
    """
    # a, b, lam and w take leading axes of 1 up to one number of batch dimensions, as
    # broadcasting would give them. Under vmap the rules of the batched calls put the mapped axis
    # first in each argument: with fewer batch dimensions than another, an argument's would line
    # up with the wrong ones of the other (a crash, or problems mixed up).
    a, b, lam, w = (_validate.unfolded(x, c) for x, c in zip((a, b, lam, w), held, strict=True))
    a, b, lam, w = _equal_batch_ranks((a, 2), (b, 2), (lam, 0), (w, 1))
    # one reduction of each: the largest entry (the solve's scale) and finiteness (see _scaling)
    a_big, finite_a = extent(a)
    b_columns, finite_b = extent(b, columns=True)
    b_big = jnp.max(jnp.where(finite_b, b_columns, 0), axis=-1, initial=0)  # of b masked below
    a_given, b_given = a, b
    a = _validate.zero_unless(a, finite_a[..., None, None])
    b = _validate.zero_unless(b, finite_b[..., None, :])
    # Invalid options poison their problem: NaN in value and (multiplied in) in derivatives. A
    # non-finite rcond (traced: effective_rcond made it NaN) poisons every problem.
    options_ok = jnp.isfinite(rcond)
    # 0 * (the raw options): adds nothing to a valid answer, but ties a NaN answer to them so
    # that its derivatives in lam and w are NaN too (the masked options carry none).
    tie = jnp.zeros((), rcond.dtype)
    if w is not None:
        tie = tie + 0 * jnp.sum(w, axis=-1)
    if lam is not None:
        tie = tie + 0 * lam
    if w is not None:  # invalid weights: also no singular values and rank 0, like a non-finite a
        valid_w = jnp.all(jnp.isfinite(w) & (w >= 0), axis=-1)
        finite_a = finite_a & valid_w
        options_ok = options_ok & valid_w
        w = jnp.where(valid_w[..., None], w, 1)
    ok = finite_a[..., None] & finite_b  # (..., K)
    if lam is not None:
        valid = jnp.isfinite(lam) & (lam >= 0)
        lam = jnp.where(valid, lam, 0)
        ok = ok & valid[..., None]
        options_ok = options_ok & valid
    # Under shard_map the rank and values vary only as a, rcond, lam and w do (one replicated a
    # serves a sharded b: R comes from the QR of [a, b], the values wait for x)
    refs = [y for y in (a_given, rcond, lam, w) if y is not None]
    root = None if w is None else jnp.sqrt(w)[..., None].astype(a.dtype)
    residuals = None  # b - a x below, unless the solve gives them
    if method == "svd":
        if w is not None and lam is None:  # scaled as the plain solve is (see _scaling)
            # (the scales of the weighted problem, which zero-weight rows do not touch; the rank
            # from the scaled values, whose smallest ones could underflow when scaled back)
            a_scale, b_scale = scales(root * a, root * b)
            a_s = a * a_scale
            x = weighted_solve(a_s, b * b_scale, rcond, jnp.zeros((), w.dtype), w)
            x = scaled_back(x, a_scale, b_scale)
            s = singular_values(root * a_s, x)
            rank = rank_of(s, rcond)
            s = s / a_scale[..., 0]
        elif w is not None:  # ridge: not scaled, as lam would scale by a_scale^2 (see README)
            x = weighted_solve(a, b, rcond, lam, w)
            s = singular_values(root * a, x)
            rank = rank_of(s, rcond)
        elif lam is None:  # its rank needs no singular values where the bound settles it
            x, s, rank, residuals = pinv_solve(
                a_given, b_given, rcond, finite_a, copies, a_big, b_big, finite_b
            )
            s = singular_values_of(a, s)
        else:
            x = ridge_solve(a, b, rcond, lam)
            s = singular_values(a, x)
            rank = rank_of(s, rcond)
    else:  # no SVD: singular values are not computed (NaN), rank is the method's estimate
        # LAPACK's triangular solves take equal batch dimensions: broadcast them first
        lam_shape = () if lam is None else lam.shape
        w_shape = () if w is None else w.shape[:-1]
        batch = jnp.broadcast_shapes(a.shape[:-2], b.shape[:-2], lam_shape, w_shape)
        a_m = jnp.broadcast_to(a, (*batch, *a.shape[-2:]))
        b_m = jnp.broadcast_to(b, (*batch, *b.shape[-2:]))
        w_m = None if w is None else jnp.broadcast_to(w, (*batch, w.shape[-1]))
        lam = None if lam is None else jnp.broadcast_to(lam, batch)
        # a and b scaled by powers of two (see _scaling): into LAPACK's safe range for the QR,
        # to a largest entry in [1/2, 1) for the normal equations, whose Gram matrix squares the
        # entries. lam scales by a_scale^2, kept far from overflow (see regularized). The
        # scales are the weighted problem's: rows of weight 0 do not set them.
        # The plain qr, as pinv_solve, takes a's scale from the given a and masks and scales a
        # where its QR reads it (see qr_solve): XLA then forms no masked copy of a whole batch.
        cholesky, plain_qr = method == "cholesky", method == "qr" and w is None
        weighted = 1 if root is None else root
        a_full = jnp.broadcast_to(a_given, a_m.shape)
        if plain_qr:  # the largest entries at hand (another reduction of a: see _scaling.extent)
            a_big, b_big = (jnp.broadcast_to(y, batch) for y in (a_big, b_big))
            a_scale, b_scale = scales(a_full, b_m, a_big=a_big, b_big=b_big)
        else:
            a_scale, b_scale = scales(weighted * a_m, weighted * b_m, always=cholesky)
        if lam is not None:
            a_scale = regularized(a_scale, lam)
        if plain_qr:
            finite_m = jnp.broadcast_to(finite_a, batch)
            x, rank = qr_solve(a_full, b_m, rcond, finite_m, a_scale, b_scale)
        elif method == "qr":
            x, rank = weighted_qr_solve(a_m * a_scale, b_m * b_scale, w_m, rcond)
        else:
            a_m, b_m = a_m * a_scale, b_m * b_scale
            lam = jnp.zeros((), rcond.dtype) if lam is None else lam
            lam = lam * a_scale[..., 0, 0] * a_scale[..., 0, 0]  # 0 stays 0 (a_scale^2 may not)
            x, rank = cholesky_solve(a_m, b_m, lam, w_m)
        x = scaled_back(x, a_scale, b_scale)
        # No singular values: NaN, and with a NaN derivative (a constant's would be a finite 0
        # for an output that has none), through x, which depends on all of a and b
        dependence = jnp.real(jnp.sum(x, axis=(-2, -1))).astype(rcond.dtype)
        s = jnp.full((*a_m.shape[:-2], min(a.shape[-2:])), jnp.nan, rcond.dtype)
        s = s * dependence[..., None]
    if residuals is None:
        residuals = _squared_norms(b - matmul(a_given, x), w)
    poison = _validate.nan_unless(options_ok) + tie
    scale = _validate.nan_unless(ok) * poison[..., None]  # 1 where valid, multiplied in
    x = x * scale[..., None, :].astype(x.dtype)
    residuals = residuals * scale
    s = s * _validate.nan_unless(finite_a)[..., None]
    rank = jnp.where(finite_a & jnp.isfinite(rcond), rank, 0)
    return x, residuals, invariant_like(rank, *refs), invariant_like(s, *refs)
