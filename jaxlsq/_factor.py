"""The factorization every solve starts from: the thin SVD a = u diag(s) vh."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

HIGHEST = lax.Precision.HIGHEST


def matmul(x: jax.Array, y: jax.Array) -> jax.Array:
    """Batched matrix product at full precision (GPUs would otherwise round through TF32)."""
    return jnp.matmul(x, y, precision=HIGHEST)


def adjoint(x: jax.Array) -> jax.Array:
    """Conjugate transpose of the last two axes."""
    return jnp.conj(jnp.swapaxes(x, -1, -2))


def svd(a: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Thin SVD: u (..., M, k), s (..., k) descending, vh (..., k, N), with k = min(M, N).

    Every caller asks for exactly this call, so that under jit XLA merges them into one
    factorization (common-subexpression elimination).
    """
    return jnp.linalg.svd(a, full_matrices=False)
