"""Static checks of lstsq's inputs: shapes, dtypes, promotion and error messages (no math)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
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


def _dtype_of(x: ArrayLike, name: str, func: str, what: str = "an array of numbers") -> np.dtype:
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        try:
            dtype = np.asarray(x).dtype
        except Exception as err:  # ragged lists and other things NumPy cannot read
            raise TypeError(
                f"{func}: {name} must be {what}; got {type(x).__name__} that NumPy cannot "
                f"convert ({err})."
            ) from None
    return np.dtype(dtype)


def _as_array(x: ArrayLike, name: str, func: str) -> jax.Array:
    dtype = _dtype_of(x, name, func)
    if not (dtype == np.bool_ or jnp.issubdtype(dtype, jnp.number)):
        raise TypeError(
            f"{func}: {name} has dtype {dtype}, which is not numeric; pass a boolean, integer, "
            "floating or complex array."
        )
    return jnp.asarray(x)


def result_dtype(*arrays: jax.Array) -> np.dtype:
    """The inexact dtype jnp.linalg.lstsq promotes these arrays to: their joint dtype, or where
    that is an integer or bool, the float JAX divides it in (int32 and narrower become float32
    even with x64 on, int64 float64)."""
    joint = jax.ShapeDtypeStruct((), jnp.result_type(*arrays))
    return np.dtype(jax.eval_shape(jnp.true_divide, joint, joint).dtype)


def compute_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(jnp.float32) if dtype in _LOW_PRECISION else dtype


# What a function that takes one problem only (sharded_lstsq) tells a caller with a batch
ONE_PROBLEM = "For a batch of problems, shard the batch axis and call jaxlsq.lstsq."


def as_matrix(a: ArrayLike, func: str, stacks: bool = True) -> jax.Array:
    """a as an array of numbers with at least two dimensions (..., M, N); stacks False: func
    takes one matrix (M, N), and the message says so."""
    a = _as_array(a, "a", func)
    if a.ndim < 2:
        want = "(M, N) or (..., M, N)" if stacks else "(M, N)"
        then = ", or a stack of them." if stacks else ". " + ONE_PROBLEM
        raise ValueError(
            f"{func}: a must have shape {want}; got shape {a.shape} ({a.ndim}-D). Pass a 2-D "
            f"matrix{then}"
        )
    return a


def effective_rcond(
    rcond: ArrayLike | None, dtype: np.dtype, compute_dtype: np.dtype, m: int, n: int
) -> jax.Array:
    """The cutoff ratio NumPy (through LAPACK's gelsd) uses, as a scalar of the real compute dtype.

    eps is the input dtype's: a float16 matrix carries float16 rounding, however it is solved.
    A non-finite rcond (only possible under jit: check_rcond refuses it otherwise) stays NaN,
    which the solvers turn into NaN outputs.
    """
    eps = float(jnp.finfo(dtype).eps)
    real = jnp.finfo(compute_dtype).dtype
    if rcond is None:
        return jnp.asarray(eps * max(m, n), real)
    if is_concrete(rcond):  # the rule in float64, before a cast could overflow (1e39 in float32)
        r = float(np.asarray(rcond, np.float64))
        value = r if 0 < r < 1 else (eps / 2 if np.isfinite(r) else np.nan)
        return jnp.asarray(value, real)
    rcond = jnp.asarray(rcond)  # traced: the rule in its own dtype, then the cast
    if not jnp.issubdtype(rcond.dtype, jnp.floating):
        rcond = rcond.astype(real)
    lapack = jnp.where((rcond <= 0) | (rcond >= 1), jnp.asarray(eps / 2, rcond.dtype), rcond)
    return jnp.where(jnp.isfinite(rcond), lapack, jnp.nan).astype(real)


def plan_lstsq(
    a: ArrayLike,
    b: ArrayLike,
    func: str = "jaxlsq.lstsq",
    names: tuple[str, str] = ("a", "b"),
    stacks: bool = True,
) -> Plan:
    """Checks a and b, promotes them and broadcasts nothing yet (the SVD runs on a's own batch).

    names: what the messages call the two (solve_adjoint's are a^H and c). stacks False: func
    takes one problem, and the messages leave out the batched shapes."""
    an, bn = names
    a = as_matrix(a, func, stacks)
    b = _as_array(b, bn, func)
    if b.ndim < 1:
        want = "(M,), (M, K) or (..., M, K)" if stacks else "(M,) or (M, K)"
        raise ValueError(
            f"{func}: {bn} must have shape {want}; got a scalar (shape ()). "
            "Pass one right-hand side as a vector of length M."
        )
    m = a.shape[-2]
    b_is_vector = b.ndim == 1
    b_rows = b.shape[0] if b_is_vector else b.shape[-2]
    if b_rows != m:
        raise ValueError(
            f"{func}: {bn} has {b_rows} rows but {an} has {m} ({an} has shape {a.shape}, {bn} "
            f"has shape {b.shape}); {bn} must have shape ({m},) or (..., {m}, K)."
        )
    if b_is_vector:
        b = b[:, None]
    try:
        batch_shape = tuple(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    except ValueError:
        raise ValueError(
            f"{func}: the batch dimensions of {an} {a.shape[:-2]} and of {bn} {b.shape[:-2]} do "
            f"not broadcast ({an} has shape {a.shape}, {bn} has shape {b.shape}); give them equal "
            "leading dimensions, or 1 where one should be shared."
        ) from None
    dtype = result_dtype(a, b)
    work = compute_dtype(dtype)
    return Plan(a.astype(work), b.astype(work), b_is_vector, batch_shape, dtype, work)


def some_column(b: jax.Array) -> jax.Array:
    """b (..., M, K), or one zero column where K = 0: the solvers then still factor a for its
    rank and singular values (and index no empty array); callers keep x[..., :K]."""
    return b if b.shape[-1] else jnp.zeros((*b.shape[:-1], 1), b.dtype)


def check_rcond(rcond: ArrayLike | None, func: str = "jaxlsq.lstsq") -> None:
    if rcond is None:
        return
    dtype = _dtype_of(rcond, "rcond", func, "a real number")
    shape = np.shape(rcond)
    if shape != ():
        raise ValueError(
            f"{func}: rcond must be a scalar (or None); got an array of shape {shape}. "
            "Pass one cut-off ratio for all problems of a batch."
        )
    if jnp.issubdtype(dtype, jnp.complexfloating) or not (
        jnp.issubdtype(dtype, jnp.number) or dtype == np.bool_
    ):
        raise TypeError(f"{func}: rcond must be a real number or None; got dtype {dtype}.")
    if is_concrete(rcond) and not np.isfinite(np.asarray(rcond, np.float64)):
        raise ValueError(
            f"{func}: rcond must be finite (or None); got {np.asarray(rcond)}. Pass a cut-off "
            "ratio in (0, 1), a value <= 0 or >= 1 for LAPACK's eps / 2, or None for the default "
            "eps * max(M, N)."
        )


def is_concrete(*arrays: jax.Array) -> bool:
    """True when every array holds values (outside jit, vmap and grad)."""
    return not any(isinstance(x, jax.core.Tracer) for x in arrays)


def held(*arrays: ArrayLike | None) -> tuple[bool, ...]:
    """Which of a public function's (checked) inputs hold more than one value, as NumPy, JAX or
    Python arrays: a static argument for unfolded. Taken as given, as under jit jnp.asarray
    turns a NumPy array into a tracer (of a constant). Scalars (a Python lam) stay foldable."""
    return tuple(x is not None and is_concrete(x) and np.size(x) > 1 for x in arrays)


def unfolded(x, constant: bool):
    """x (an array, a pytree of arrays, or None) behind an optimization barrier where it held
    values when the caller was traced.

    Under an outer jit such an array is a constant of the program, and XLA evaluates every
    computation on constants alone while it compiles, element by element: the finiteness and
    scale reductions of 10,000 closed-over 64x8 float32 matrices took 11.7 s of compilation (1.2 s
    with the matrices as an argument, 1.8 s behind the barrier). Outside jit the barrier stands
    on the program's parameters, where it changes nothing (eager calls took 0.98-1.01x the
    time)."""
    return lax.optimization_barrier(x) if constant else x


def _real_array(x: ArrayLike, name: str, plan: Plan, func: str, what: str) -> jax.Array:
    """x as an array of the real compute dtype, with a clear error where a value is invalid."""
    dtype = _dtype_of(x, name, func)
    if not (jnp.issubdtype(dtype, jnp.number) or dtype == np.bool_) or jnp.issubdtype(
        dtype, jnp.complexfloating
    ):
        raise TypeError(f"{func}: {name} must be a real number or a real array; got dtype {dtype}.")
    x = jnp.asarray(x, jnp.finfo(plan.compute_dtype).dtype)
    if is_concrete(x) and x.size:
        values = np.asarray(x)
        bad = values[~(np.isfinite(values) & (values >= 0))]
        if bad.size:
            raise ValueError(f"{func}: {name} must be finite and >= 0; got {bad[0]}. {what}")
    return x


def check_l2_regularizer(lam: ArrayLike | None, plan: Plan, func: str) -> jax.Array | None:
    """lam as an array of the real compute dtype (None stays None)."""
    if lam is None:
        return None
    return _real_array(
        lam,
        "l2_regularizer",
        plan,
        func,
        "Pass lam >= 0 (0 gives the plain minimum-norm solution).",
    )


def check_weights(weights: ArrayLike | None, plan: Plan, func: str) -> jax.Array | None:
    """Row weights (..., M) as an array of the real compute dtype (None stays None)."""
    if weights is None:
        return None
    m = plan.a.shape[-2]
    _dtype_of(weights, "weights", func)  # a clear error for ragged lists before np.shape
    shape = np.shape(weights)
    if len(shape) < 1 or shape[-1] != m:
        raise ValueError(
            f"{func}: weights must have shape (..., M) = (..., {m}), one weight per row of a; got "
            f"shape {shape}."
        )
    return _real_array(
        weights, "weights", plan, func, "Pass w >= 0 (0 drops a row; NaN or inf is not a weight)."
    )


def batch_with(
    plan: Plan, func: str, lam: jax.Array | None, weights: jax.Array | None
) -> tuple[int, ...]:
    """The solution's batch shape when l2_regularizer (...) and weights (..., M) join a and b's."""
    shape = plan.batch_shape
    for name, batch in (("l2_regularizer", lam), ("weights", weights)):
        if batch is None:
            continue
        batch_shape = batch.shape if name == "l2_regularizer" else batch.shape[:-1]
        try:
            shape = tuple(np.broadcast_shapes(shape, batch_shape))
        except ValueError:
            part = "which" if batch_shape == batch.shape else f"whose batch part {batch_shape}"
            raise ValueError(
                f"{func}: {name} has shape {batch.shape}, {part} does not broadcast against the "
                f"batch dimensions {shape} of the other inputs; pass one value for all problems, "
                "one per problem, or a shape that broadcasts."
            ) from None
    return shape


METHODS = ("svd", "qr", "cholesky")


def check_method(method: str, lam: jax.Array | None, func: str) -> None:
    if method not in METHODS:
        raise ValueError(
            f"{func}: method must be one of {', '.join(map(repr, METHODS))}; got {method!r}."
        )
    if method == "qr" and lam is not None:
        raise ValueError(
            f"{func}: method='qr' has no ridge term; got l2_regularizer. Use method='svd' (any "
            "rank) or method='cholesky' (well-conditioned problems) for ridge regression."
        )


def nan_unless(ok: jax.Array) -> jax.Array:
    """1 where ok, NaN elsewhere, to multiply an output by under jit: its derivatives are then
    NaN too, where a select (jnp.where(ok, x, nan)) would pass zero cotangents, a finite gradient
    for a NaN answer. Weakly typed, so the product keeps the other factor's dtype."""
    return jnp.where(ok, 1.0, jnp.nan)


@jax.custom_jvp
def zero_unless(x: jax.Array, ok: jax.Array) -> jax.Array:
    """x where ok (broadcast against x), 0 elsewhere, for LAPACK; the derivative is NaN
    elsewhere, not the select's 0, so that a NaN answer has NaN derivatives."""
    return jnp.where(ok, x, 0)


@zero_unless.defjvp
def _zero_unless_jvp(primals, tangents):
    x, ok = primals
    return zero_unless(x, ok), tangents[0] * nan_unless(ok)
