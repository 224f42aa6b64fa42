"""One batched LAPACK call at a time: data dependences that order jaxlsq's factorizations.

On the CPU, jaxlib 0.10's LAPACK kernels split a batch of matrices over XLA's intra-op thread
pool and block until every piece is done. Calls that do not depend on each other may run at the
same time, and once as many of them are blocked as there are threads to run pieces (three on a
2-core machine), no thread is left and the program hangs for ever. Plain JAX shows it too: one
batched QR whose factors feed an ``ormqr``, an SVD and an ``orgqr`` hangs on 2 cores. (Calls on
a single matrix run in the calling thread and are not affected; later jaxlib releases no longer
split batches this way.)

jaxlsq therefore orders the batched LAPACK calls of each solve by data: ``after(x, y)`` is ``x``
plus zero times a finite entry of ``y`` of the same problem, which XLA keeps (it does not fold
``0 * t`` for floats) and the CPU runtime waits for. Its cost is one small elementwise operation
per call; it changes no value and no derivative (its tangent is ``x``'s). The tests read the
compiled programs and fail where two LAPACK calls are left unordered.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.custom_batching import custom_vmap


def token(y: jax.Array, core: int) -> jax.Array:
    """A per-problem scalar that is ready only once y is: y's first entry, zero where it is not
    finite, times zero. y has core trailing (matrix or vector) dimensions."""
    t = jnp.real(y[(..., *([0] * core))]) if core else jnp.real(y)
    return 0 * jnp.where(jnp.isfinite(t), t, 0)


def after(x: jax.Array | None, y: jax.Array, *, x_core: int = 2, y_core: int = 2):
    """x, made to wait for y (both with x_core and y_core trailing non-batch dimensions); None
    (no array, e.g. the reflectors' taus where JAX has no ormqr) stays None."""
    return None if x is None else _after(x, token(y, y_core), x_core)


@partial(jax.custom_jvp, nondiff_argnums=(2,))
def _after(x: jax.Array, t: jax.Array, core: int) -> jax.Array:
    return _add_token(x, t, core)


@_after.defjvp
def _after_jvp(core, primals, tangents):
    x, t = primals
    return _after(x, t, core), tangents[0]  # the token adds zero: x's tangent passes through


def _add_token(x: jax.Array, t: jax.Array, core: int) -> jax.Array:
    """x + t with t summed down to x's batch shape, so that x keeps its shape (a token from a
    broadcast batch then covers all the problems x's own one serves)."""
    batch = x.shape[: x.ndim - core]
    extra = t.ndim - len(batch)
    if extra > 0:
        t = jnp.sum(t, axis=tuple(range(extra)))
    wide = tuple(i for i, (d, e) in enumerate(zip(batch[-t.ndim :], t.shape)) if d == 1 != e)
    if t.ndim and wide:
        t = jnp.sum(t, axis=wide, keepdims=True)
    return _add(x, t.reshape(*t.shape, *([1] * core)).astype(x.dtype))


@custom_vmap
def _add(x: jax.Array, t: jax.Array) -> jax.Array:
    return x + t


@_add.def_vmap
def _add_vmap_rule(axis_size, in_batched, x, t):
    x_batched, t_batched = in_batched
    if t_batched and not x_batched:  # keep x unbatched (a shared factor stays shared)
        return _add(x, jnp.sum(t, axis=0)), False
    t = t if t_batched else jnp.broadcast_to(t, (axis_size, *t.shape))
    x = x if x_batched else jnp.broadcast_to(x, (axis_size, *x.shape))
    return _add(x, t), True
