"""Static checks of lstsq's inputs: shapes, dtypes, promotion and error messages (no math)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

# Dtypes with too few bits for an SVD: solved in float32, returned in their own dtype.
_LOW_PRECISION = (jnp.float16, jnp.bfloat16)


class Plan(NamedTuple):
    """What the public wrapper needs to know about its (already checked) inputs."""

    a: jax.Array  # (..., M, N) in the compute dtype
    b: jax.Array  # (..., M, K) in the compute dtype
    b_is_vector: bool
    batch_shape: tuple[int, ...]
    dtype: np.dtype  # the result dtype (what the caller gets back)
    compute_dtype: np.dtype  # what the SVD runs in


def _as_array(x: ArrayLike, name: str, func: str) -> jax.Array:
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        try:
            dtype = np.asarray(x).dtype
        except Exception as err:  # ragged lists and other things NumPy cannot read
            raise TypeError(
                f"{func}: {name} must be an array of numbers; got {type(x).__name__} that "
                f"NumPy cannot convert ({err})."
            ) from None
    dtype = np.dtype(dtype)
    if not (dtype == np.bool_ or jnp.issubdtype(dtype, jnp.number)):
        raise TypeError(
            f"{func}: {name} has dtype {dtype}, which is not numeric; pass a boolean, integer, "
            "floating or complex array."
        )
    return jnp.asarray(x)


def result_dtype(*arrays: jax.Array) -> np.dtype:
    """The inexact dtype JAX promotion gives these arrays (integers and bools become floats)."""
    return np.dtype(jnp.result_type(*arrays, float))


def compute_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(jnp.float32) if dtype in _LOW_PRECISION else dtype


def plan_lstsq(a: ArrayLike, b: ArrayLike, func: str = "jaxlsq.lstsq") -> Plan:
    """Checks a and b, promotes them and broadcasts nothing yet (the SVD runs on a's own batch)."""
    a = _as_array(a, "a", func)
    b = _as_array(b, "b", func)
    if a.ndim < 2:
        raise ValueError(
            f"{func}: a must have shape (M, N) or (..., M, N); got shape {a.shape} "
            f"({a.ndim}-D). Pass a 2-D matrix, or a stack of them."
        )
    if b.ndim < 1:
        raise ValueError(
            f"{func}: b must have shape (M,), (M, K) or (..., M, K); got a scalar (shape ()). "
            "Pass one right-hand side as a vector of length M."
        )
    m = a.shape[-2]
    b_is_vector = b.ndim == 1
    b_rows = b.shape[0] if b_is_vector else b.shape[-2]
    if b_rows != m:
        raise ValueError(
            f"{func}: b has {b_rows} rows but a has {m} (a has shape {a.shape}, b has shape "
            f"{b.shape}); b must have shape ({m},) or (..., {m}, K)."
        )
    if b_is_vector:
        b = b[:, None]
    try:
        batch_shape = tuple(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    except ValueError:
        raise ValueError(
            f"{func}: the batch dimensions of a {a.shape[:-2]} and of b {b.shape[:-2]} do not "
            f"broadcast (a has shape {a.shape}, b has shape {b.shape}); give them equal "
            "leading dimensions, or 1 where one should be shared."
        ) from None
    dtype = result_dtype(a, b)
    work = compute_dtype(dtype)
    return Plan(a.astype(work), b.astype(work), b_is_vector, batch_shape, dtype, work)


def check_rcond(rcond: ArrayLike | None, func: str = "jaxlsq.lstsq") -> None:
    if rcond is None:
        return
    shape = np.shape(rcond)
    if shape != ():
        raise ValueError(
            f"{func}: rcond must be a scalar (or None); got an array of shape {shape}. "
            "Pass one cut-off ratio for all problems of a batch."
        )
    dtype = np.dtype(getattr(rcond, "dtype", None) or np.asarray(rcond).dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating) or not (
        jnp.issubdtype(dtype, jnp.number) or dtype == np.bool_
    ):
        raise TypeError(f"{func}: rcond must be a real number or None; got dtype {dtype}.")


def is_concrete(*arrays: jax.Array) -> bool:
    """True when every array holds values (outside jit, vmap and grad)."""
    return not any(isinstance(x, jax.core.Tracer) for x in arrays)


def check_l2_regularizer(lam: ArrayLike | None, plan: Plan, func: str) -> jax.Array | None:
    """lam as an array of the real compute dtype; a clear error where its value is known."""
    if lam is None:
        return None
    dtype = np.dtype(getattr(lam, "dtype", None) or np.asarray(lam).dtype)
    if not (jnp.issubdtype(dtype, jnp.number) or dtype == np.bool_) or jnp.issubdtype(
        dtype, jnp.complexfloating
    ):
        raise TypeError(
            f"{func}: l2_regularizer must be a real number or a real array; got dtype {dtype}."
        )
    lam = jnp.asarray(lam, jnp.finfo(plan.compute_dtype).dtype)
    if is_concrete(lam) and lam.size and not bool(jnp.all(jnp.isfinite(lam) & (lam >= 0))):
        bad = np.asarray(lam)[~(np.isfinite(np.asarray(lam)) & (np.asarray(lam) >= 0))]
        raise ValueError(
            f"{func}: l2_regularizer must be finite and >= 0; got {bad.ravel()[0]}. Pass lam >= 0 "
            "(0 gives the plain minimum-norm solution)."
        )
    return lam


def batch_with(plan: Plan, lam: jax.Array, func: str) -> tuple[int, ...]:
    """The batch shape of the solution when l2_regularizer (shape (...)) joins a and b's batch."""
    try:
        return tuple(np.broadcast_shapes(plan.batch_shape, lam.shape))
    except ValueError:
        raise ValueError(
            f"{func}: l2_regularizer has shape {lam.shape}, which does not broadcast against the "
            f"batch dimensions {plan.batch_shape} of a and b; pass a scalar, one value per "
            "problem, or an array that broadcasts against the batch shape."
        ) from None
