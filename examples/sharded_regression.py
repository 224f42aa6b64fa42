"""A regression with 4 million rows, split over the available devices (TSQR).

jaxlsq.sharded_lstsq keeps each device's rows where they are: every device QR-factors its block,
and only the small triangular factors cross devices. On a CPU this script simulates 8 devices;
on a machine with several GPUs the same code uses them (on several hosts, call
jax.distributed.initialize() first and build the mesh from jax.devices()).

Run: python3 examples/sharded_regression.py
"""

import os

# 8 simulated devices when JAX runs on the CPU; set before JAX is imported (no effect on GPUs).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxlsq  # noqa: E402

ROWS, FEATURES = 2**22, 16
devices = jax.devices()
mesh = Mesh(np.array(devices), ("rows",))
rows = NamedSharding(mesh, P("rows"))
print(f"{len(devices)} {devices[0].platform} devices, {ROWS:,} rows x {FEATURES} features")


@jax.jit
def make_data(key):
    """y = X beta + noise, generated where it will live (each device makes its own rows)."""
    k1, k2 = jax.random.split(key)
    x = jax.random.normal(k1, (ROWS, FEATURES), jnp.float32)
    beta = jnp.arange(1, FEATURES + 1, dtype=jnp.float32) / FEATURES
    y = x @ beta + 0.1 * jax.random.normal(k2, (ROWS,), jnp.float32)
    return x, y, beta


make_data = jax.jit(make_data.__wrapped__, out_shardings=(rows, rows, None))
x, y, beta = make_data(jax.random.key(0))


def fit(x, y):
    return jaxlsq.sharded_lstsq(x, y, mesh=mesh, axis_name="rows")


jax.block_until_ready(fit(x, y))  # compile
start = time.perf_counter()
result = jax.block_until_ready(fit(x, y))
elapsed = time.perf_counter() - start
error = float(jnp.max(jnp.abs(result.x - beta)))
print(f"sharded fit: {elapsed:.2f} s, rank {int(result.rank)}, max |x - beta| = {error:.1e}")
print(f"residual mean square: {float(result.residuals[0]) / ROWS:.5f} (noise variance 0.01)")

# Agreement with the single-device solve, on a subsample that fits one device comfortably.
sub = ROWS // 64
x_sub, y_sub = np.asarray(x[:sub]), np.asarray(y[:sub])
sharded = jaxlsq.sharded_lstsq(x_sub, y_sub, mesh=mesh, axis_name="rows")
single = jaxlsq.lstsq(x_sub, y_sub)
difference = float(jnp.max(jnp.abs(sharded.x - single.x)) / jnp.max(jnp.abs(single.x)))
print(f"subsample of {sub:,} rows, sharded vs one device: max relative difference {difference:.1e}")

# Gradients work the same way: d(loss)/d(y) without gathering the rows.
grad_y = jax.jit(jax.grad(lambda y: jnp.sum(fit(x, y).x ** 2)))(y)
print(f"gradient w.r.t. y: shape {grad_y.shape}, finite: {bool(jnp.all(jnp.isfinite(grad_y)))}")
