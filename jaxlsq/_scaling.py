"""Scaling by powers of two, for matrices whose entries are all tiny or all huge.

LAPACK's gelsd scales a (and b) when max |a_ij| lies outside [smlnum, 1 / smlnum], smlnum =
safmin / eps (about 1e-31 in float32, 1e-292 in float64), and scales the answer back. JAX's QR
does not, and XLA flushes subnormal numbers to zero: the Householder QR of a matrix whose entries
are all below smlnum rounds its intermediate values to the absolute level of safmin, a relative
error of safmin / max |a_ij| or more (5x5 float32 at 1e-35: 9e-4 in x). At the other end, norms
overflow. A power of two scales exactly, so a matrix inside the range keeps scale 1 and every
bit of its answer, and a scaled one gets the answer of the scaled problem, scaled back exactly.
Subnormal entries of the input itself are read as zero by XLA before any scaling; no scaling
recovers them (jnp.linalg.lstsq loses them too).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def exponent(x: jax.Array) -> jax.Array:
    """frexp's exponent e of a positive finite x (x = f 2^e, f in [1/2, 1)), int32, read from its
    bits: a few integer operations where jnp.frexp's general case (zeros, infinities, NaN,
    subnormal numbers) is some 30 operations, repeated in each fused program that reads a scale.
    A subnormal x (which XLA flushes to zero anyway) gets the least normal exponent, above its
    own."""
    info = jnp.finfo(x.dtype)
    bits = lax.bitcast_convert_type(x, jnp.dtype(f"int{info.bits}"))
    biased = (bits >> info.nmant) & ((1 << info.nexp) - 1)
    return jnp.maximum(biased, 1).astype(jnp.int32) + jnp.int32(info.minexp)


def power_of_two(e: jax.Array, dtype) -> jax.Array:
    """2^e as dtype, for an integer e of the normal range (float32: -126 to 127), from its bits."""
    info = jnp.finfo(dtype)
    biased = (e - info.minexp + 1).astype(jnp.dtype(f"int{info.bits}"))
    return lax.bitcast_convert_type(biased << info.nmant, info.dtype)


def largest(x: jax.Array) -> jax.Array:
    """max |x_ij| of each matrix of x (..., M, N), shape (...); 0 where the matrix is empty.
    Meaningless where x is not finite (XLA's CPU reductions may drop NaN): callers check
    finiteness on their own (extent gives both) and do not use the scale there."""
    return extent(x)[0]


def extent(x: jax.Array, columns: bool = False) -> tuple[jax.Array, jax.Array]:
    """(max |x_ij|, whether every x_ij is finite) of each matrix of x (..., M, N): two arrays of
    shape (...), or with columns of each column, shape (..., N); (0, True) where empty. The
    largest is meaningless where x is not finite.

    One variadic reduction gives both, over each matrix's entries as one column, in one pass
    over x, where jnp.max and jnp.all would read it twice (XLA keeps the pass whole only where
    the program holds no other reduction of the same x: the solve passes the largest on). Alone
    (one process, 40 interleaved rounds, 2 CPU cores), jaxlib 0.10.2: 10,000 64 x 8 float32
    matrices 0.77 ms, where jnp.max took 0.73 and jnp.all 1.43; 10,000 columns of 64 0.16 ms,
    where jnp.max took 2.32 (jaxlib's YNNPACK reduction) and jnp.all 0.33. jaxlib 0.6.0,
    float64 matrices: 3.5 ms, where jnp.max took 21.7 and jnp.all 4.7."""
    x = lax.stop_gradient(x)

    def both(p, q):
        return jnp.maximum(p[0], q[0]), p[1] & q[1]

    if not columns:  # an explicitly sharded type keeps its columns, reduced after
        x = _flattened(x, column=True)
    start = jnp.zeros((), jnp.finfo(x.dtype).dtype), jnp.ones((), bool)
    big, finite = lax.reduce((jnp.abs(x), jnp.isfinite(x)), start, both, (x.ndim - 2,))
    if columns:
        return big, finite
    return jnp.max(big, axis=-1, initial=0), jnp.all(finite, axis=-1)


def _flattened(x: jax.Array, column: bool) -> jax.Array:
    """Each matrix of x (..., M, N) as one run of its entries, a column (..., M N, 1) or a row
    (..., 1, M N), which XLA's CPU reductions take faster than the two axes; an explicitly
    sharded type as it is, whose reshape would need the new sharding. Which run is fast depends
    on the reduction: extent's variadic lax.reduce wants the column, frobenius's jnp.max and
    jnp.sum the row (10,000 8 x 8 float32 matrices: 0.78 ms as a row, 8.0 as a column)."""
    if explicitly_sharded(x):
        return x
    run = x.shape[-2] * x.shape[-1]
    return x.reshape(*x.shape[:-2], *((run, 1) if column else (1, run)))


def explicitly_sharded(x: jax.Array) -> bool:
    """Whether x's type names a mesh axis (explicit sharding, even over a one-device mesh)."""
    return any(axis is not None for axis in getattr(jax.typeof(x).sharding, "spec", ()))


def frobenius(x: jax.Array) -> jax.Array:
    """Frobenius norm of each matrix of x (..., M, N) without overflow or underflow of the
    squares: the sum is taken of x 2^-e, whose largest entry lies in [1/2, 1), and scaled back.

    2^-e is applied as two factors, each a normal number. One factor (or x / max |x|, which XLA
    computes as x times 1 / max |x|) is subnormal where the largest entry exceeds 1 / tiny
    (float32: 8.5e37), and XLA flushes it to zero: every such norm came out 0, and a rank
    deficient R, whose R^{-1} reached that size, passed the full-rank bound (then built on these
    norms) as full rank. inf for a matrix with an infinite entry, NaN for one with a NaN. Used by
    the normal equations' check (_methods); the full-rank bound now scales R by a bound from a's
    largest entry instead (_full_rank._certainly_full), which needs no pass for the largest.

    Each matrix is reduced as one row of its entries (_flattened): over the two axes, XLA's CPU
    reductions took 3.2-3.5 ms for two such norms of 10,000 8 x 8 factors (measured when the
    full-rank bound used them), where over one row they took 1.0 (float32) and 1.9 ms
    (float64); the same sums, bit for bit (one process, 60 interleaved rounds, 2 cores). A
    single small matrix pays about 1 us more a norm (6 x 6: 14.4 us against 13.6); under vmap a
    batch is traced as one matrix, so no shape test could keep single ones on the old form."""
    x = _flattened(x, column=False)
    big = jnp.max(jnp.abs(x), axis=(-2, -1), keepdims=True)
    e = exponent(jnp.where((big > 0) & (big < jnp.inf), big, 1))
    half = e >> 1  # floor(e / 2): an arithmetic shift, where // takes a dozen operations
    parts = (x,) if jnp.isrealobj(x) else (jnp.real(x), jnp.imag(x))
    real = big.dtype
    down = power_of_two(-half, real), power_of_two(half - e, real)  # 2^-e, 2^e: two normal factors
    up = power_of_two(half, real), power_of_two(e - half, real)
    # the squares of the parts, not of |x|: XLA would share |x| with the max and keep it whole
    total = sum(jnp.sum((p * down[0] * down[1]) ** 2, axis=(-2, -1), keepdims=True) for p in parts)
    return (jnp.sqrt(total) * up[0] * up[1])[..., 0, 0]


def unit_scale(big: jax.Array, always: bool = False, to_edge: bool = False) -> jax.Array:
    """A power of two per matrix from its largest magnitude big (largest's output): 2^-e with
    big = f 2^e, f in [0.5, 1), where big lies outside [safmin / eps, eps / safmin] (anywhere
    with always), else 1 (also for a zero or non-finite matrix). With to_edge a big above the
    range is brought only just inside it (f 2^(log2(eps / safmin))), as gelsd scales b: entries
    far below the largest then stay above the subnormal range. No derivative: a constant of the
    problem, its derivative zero where it is constant and undefined at jumps."""
    info = jnp.finfo(big.dtype)
    small = float(info.tiny) / float(info.eps)
    outside = (big > 0) & (big < jnp.inf)
    if not always:
        outside = outside & ((big < small) | (big > 1 / small))
    e = exponent(jnp.where(outside, big, 1))
    if to_edge:  # eps / safmin = 2^edge exactly
        edge = -info.minexp - info.nmant  # float32: 126 - 23 = 103
        e = jnp.where(big > 1 / small, e - edge, e)
    # 2^-e stays a normal number: -e in [minexp, maxexp - 1] (float32: 2^-126 to 2^127)
    e = jnp.clip(-e, info.minexp, info.maxexp - 1)
    return jnp.where(outside, power_of_two(e, big.dtype), 1).astype(big.dtype)


def scales(
    a: jax.Array,
    b: jax.Array,
    always: bool = False,
    a_big: jax.Array | None = None,
    b_big: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Scales of a (..., M, N) and b (..., M, K), each of shape (..., 1, 1): the problem
    (a_scale a) x' = b_scale b has x = x' a_scale / b_scale and singular values s' = a_scale s.
    a is brought to a largest entry in [1/2, 1) (the derivative's (A^H A)^+ of a tiny a would
    overflow at the edge of the range); b, whose entries far below its largest would be flushed
    to zero there, only just inside the range when it is huge (a tiny b has no such entries:
    they were subnormal to begin with). always (the normal equations) applies to a, and to a b
    below 1/2, which goes up to [1/2, 1): where regularized caps a's scale, x' ~ A^H b / lam
    scales with b and no longer with a's scale only. a_big, b_big: largest(a) and largest(b),
    where the caller has them at hand. No derivative: products with them pass a's and b's on."""
    a_big = largest(a) if a_big is None else a_big
    a_scale = unit_scale(a_big, always)[..., None, None]
    b_big = largest(b) if b_big is None else b_big
    b_scale = unit_scale(b_big, to_edge=True)
    if always:  # scaling up never flushes an entry
        b_scale = jnp.where(b_big < 0.5, unit_scale(b_big, always=True), b_scale)
    return a_scale, b_scale[..., None, None]


def regularized(a_scale: jax.Array, lam: jax.Array) -> jax.Array:
    """a_scale for the normal equations with lam (..., a_scale's batch shape), where lam a_scale^2
    joins the scaled Gram matrix's diagonal: where a is scaled up, by no more than keeps
    lam a_scale^2 below 1 (and at least by 1; lam = 0 leaves a_scale as it is). Where that caps
    the scale, lam exceeds a's entries squared: the scaled Gram matrix and lam then lie near or
    below 1, far from overflow (a scaled to a largest entry of 1 would take lam = 1000 with a at
    2^-60 to 2^128), and the solve's x' ~ A^H b / (lam a_scale^2) is no smaller than A^H b,
    which b's own scaling up (scales with always) keeps inside the normal range."""
    scale = a_scale[..., 0, 0]
    e = exponent(jnp.where((lam > 0) & (lam < jnp.inf), lam, 1).astype(scale.dtype))
    # lam < 2^e, so lam 2^(2 j) < 1 for j = floor(-e / 2)
    cap = power_of_two(jnp.clip((-e) >> 1, 0, None), scale.dtype)
    return jnp.where((scale > 1) & (lam > 0), jnp.minimum(scale, cap), scale)[..., None, None]


def scaled_back(x: jax.Array, a_scale: jax.Array, b_scale: jax.Array) -> jax.Array:
    """x = x' a_scale / b_scale for the solution x' of the scaled problem: by the ratio where it
    is a normal number, else by one factor after the other (a tiny a with a huge b: the ratio
    overflows where x itself need not). The unused branch gets a ratio of 1, so that its zero
    cotangent stays zero."""
    ratio = a_scale / b_scale
    normal = (ratio >= jnp.finfo(ratio.dtype).tiny) & (ratio < jnp.inf)
    return jnp.where(normal, x * jnp.where(normal, ratio, 1), x * a_scale / b_scale)
