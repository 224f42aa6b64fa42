r"""Singular values of many small real matrices at once, by one-sided Jacobi (Hestenes).

LAPACK's gesdd costs about 4-6 us per call on an 8 x 8 factor, most of it the call itself rather
than its arithmetic, and a batch of such factors takes one call per problem. Here the whole batch
moves together instead: every operation below is elementwise over the problems, which sit on the
minor axes.

Each sweep rotates every pair of columns (p, q) so that they become orthogonal: with
alpha = ||a_p||^2, beta = ||a_q||^2, gamma = a_p^H a_q and zeta = (beta - alpha) / (2 gamma), the
rotation [[c, s], [-s, c]] with t = s / c = sign(zeta) / (|zeta| + sqrt(1 + zeta^2)) (the smaller
root) zeroes the pair's inner product. A pair whose cosine |gamma| / sqrt(alpha beta) is already
at most n eps is left as it is (exactly: c = 1, s = 0). The loop ends after the first sweep that
rotates no pair of any problem, not counting pairs whose norms multiply to less than tiny / eps:
there the squares of the entries leave the normal range (a squared norm flushed to zero makes
every inner product look large), and such a pair, rotated again and again by amounts below the
rounding of the larger columns, kept the sweeps going to their cap. The column norms are then the
singular values. A problem whose sweep rotates nothing is unchanged by the sweeps the rest of its
batch still takes, so its values do not depend on the batch around it; a problem with a pair below
the floor may go on rotating that pair, so that only its values below about sqrt(tiny / eps) of
the largest can vary with its batch.

Accuracy: as gesdd's, a few eps times the largest value, always; and where R = B D with B's
columns of unit norm, each value to a relative error of about n eps cond(B) (Demmel and Veselic
1992), which gesdd does not promise: graded columns keep their small values. Values below about
sqrt(tiny / eps) of the largest entry (float32 3e-16, float64 1e-146) have the absolute accuracy
only, and those below sqrt(tiny) (squares flushed to zero: 1e-19, 1e-154) may come out as zero.

The pairs of a sweep are taken n / 2 at a time, disjoint, in the round-robin (caterpillar) order of
Brent and Luk (1985), so that each step is one vector operation over the pairs and the problems.
XLA's CPU reductions over a non-minor axis are slow (a sum over the leading axis of a 64x9x10,000
array took 35 ms, over the minor one 1.7), so the column sums are written out as additions.

Measured on 2 CPU cores (10,000 8 x 8 factors R of random 64 x 8 matrices, 15 interleaved rounds
in each of two processes): float32 0.34-0.55x of gesdd's time (7 sweeps: 17.8-20.8 ms against
32.2-62.0), float64 0.66-0.91x (7 sweeps: 33.7-40.5 ms against 37.0-61.3); largest relative error
per value 7.0e-7 against gesdd's 5.3e-6 in float32 (float64 NumPy reference). At order 16 the
sweeps cost more than gesdd (179 ms against 113 for 10,000 float32 factors), so larger factors
keep gesdd.

References: M. R. Hestenes, Inversion of matrices by biorthogonalization and related results
(1958); R. P. Brent and F. T. Luk, The solution of singular-value and symmetric eigenvalue
problems on multiprocessor arrays (1985); J. Demmel and K. Veselic, Jacobi's method is more
accurate than QR (1992).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from ._factor import vary_like
from ._scaling import largest, unit_scale

# A cap on the sweeps; the batches above converge in 7-8. A batch that reaches it has not converged
# (no input of the tests does): its values are the column norms after the last sweep.
MAX_SWEEPS = 30


def jacobi_values(r: jax.Array) -> jax.Array:
    """The singular values, descending, of each real (..., n, n) matrix in r (n >= 1)."""
    return values_and_sweeps(r)[0]


def values_and_sweeps(r: jax.Array) -> tuple[jax.Array, jax.Array]:
    """jacobi_values(r), and the number of sweeps its batch took (int32; MAX_SWEEPS at most).

    Each matrix is first scaled by a power of two (exact) to a largest entry in [1/2, 1), where
    the squared column norms cannot overflow."""
    n = r.shape[-1]
    scale = unit_scale(largest(r), always=True)[..., None, None]
    cols = jnp.moveaxis(r * scale, (-1, -2), (0, 1))  # (columns, rows, ...): problems minor
    if n % 2:  # an even count of columns for the pairing; a zero column never rotates
        cols = jnp.concatenate([cols, jnp.zeros_like(cols[:1])])
    half = cols.shape[0] // 2
    info = jnp.finfo(r.dtype)
    tol, floor = n * info.eps, info.tiny / info.eps

    def step(top, bottom):  # rotate the pairs (top[i], bottom[i]), then pass to the next pairing
        alpha, beta = _sum_rows(top * top), _sum_rows(bottom * bottom)
        gamma = _sum_rows(top * bottom)
        norms = jnp.sqrt(alpha) * jnp.sqrt(beta)
        rotate = jnp.abs(gamma) > tol * norms
        zeta = (beta - alpha) / (2 * jnp.where(rotate, gamma, 1))
        sign = jnp.where(zeta < 0, -1, 1).astype(r.dtype)
        t = jnp.where(rotate, sign / (jnp.abs(zeta) + jnp.hypot(1, zeta)), 0)
        c = jnp.where(rotate, lax.rsqrt(1 + t * t), 1)[:, None]  # exactly 1 where not rotating
        s = c * t[:, None]  # 0 there; unmasked, so that a NaN in one column reaches the other
        top, bottom = c * top - s * bottom, s * top + c * bottom
        if half > 1:  # the caterpillar: the first column stays, the others move round the ring
            top, bottom = (
                jnp.concatenate([top[:1], bottom[:1], top[1 : half - 1]]),
                jnp.concatenate([bottom[1:], top[half - 1 :]]),
            )
        # a pair below the floor keeps no sweep going (masking its rotation instead cost 1.3-1.5x)
        return top, bottom, rotate & (norms > floor)

    def sweep(carry):
        top, bottom, _, count = carry
        rotated = jnp.zeros((half, *top.shape[2:]), bool)
        for _ in range(2 * half - 1):  # every pair once
            top, bottom, rotate = step(top, bottom)
            rotated = rotated | rotate
        return top, bottom, jnp.any(rotated), count + 1

    def going(carry):
        return carry[2] & (carry[3] < MAX_SWEEPS)

    # inside shard_map the flag varies as r does (each device loops for its own problems)
    start = (cols[:half], cols[half:], vary_like(jnp.ones((), bool), r), jnp.int32(0))
    top, bottom, _, count = lax.while_loop(going, sweep, start)
    cols = jnp.concatenate([top, bottom])
    norms = jnp.sqrt(_sum_rows(cols * cols))  # (columns, ...)
    values = _descending(norms)[:n]  # a padded column's zero is the last
    return jnp.moveaxis(values, 0, -1) / scale[..., 0], count


def _descending(x: jax.Array) -> jax.Array:
    """x (n, ...), n even, sorted along axis 0, largest first and NaN last (as -jnp.sort(-x,
    axis=0)), by n rounds of odd-even transposition, two to a loop step: elementwise over the
    problems. Alone, on 10,000 columns of 8 (2 cores), 1.1 ms where XLA's CPU sort along the major
    axis took 6.5; unrolled, the rounds fused into their consumer, where each entry of the output
    took the whole network again (3.6 ms)."""
    assert x.shape[0] % 2 == 0, x.shape

    def pairs(y):  # (y[0], y[1]), (y[2], y[3]), ... each in order
        first, second = y[0::2], y[1::2]
        swap = (second > first) | (jnp.isnan(first) & ~jnp.isnan(second))
        ordered = jnp.where(swap, second, first), jnp.where(swap, first, second)
        return jnp.stack(ordered, axis=1).reshape(y.shape)

    def rounds(_, y):  # an even round, then an odd one
        y = pairs(y)
        return jnp.concatenate([y[:1], pairs(y[1:-1]), y[-1:]])

    return lax.fori_loop(0, x.shape[0] // 2, rounds, x)


def _sum_rows(x: jax.Array) -> jax.Array:
    """x summed over its axis 1 (a column's rows), as elementwise additions in row order."""
    total = x[:, 0]
    for i in range(1, x.shape[1]):
        total = total + x[:, i]
    return total
