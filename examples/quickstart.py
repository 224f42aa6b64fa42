"""Quickstart: fit a line with jaxlsq, and see why its gradients matter.

Run: python3 examples/quickstart.py
"""

import jax
import jax.numpy as jnp
import numpy as np

import jaxlsq

# 1. Fit y = m x + c through four points (NumPy's lstsq example).
x_data = jnp.array([0.0, 1.0, 2.0, 3.0])
y_data = jnp.array([-1.0, 0.2, 0.9, 2.1])
design = jnp.stack([x_data, jnp.ones_like(x_data)], axis=1)
(m, c), residuals, rank, singular_values = jaxlsq.lstsq(design, y_data)
print(f"fit: m = {m:.4f}, c = {c:.4f}  (rank {rank}, residual {residuals[0]:.4f})")

# 2. Differentiate through a fit on an orthonormal design (a common case: orthogonal
#    polynomials, Fourier features, QR-whitened inputs).
q, _ = jnp.linalg.qr(jax.random.normal(jax.random.key(0), (10, 4)))
b = jnp.arange(10.0)


def fit_norm_jaxlsq(a):
    return jnp.sum(jaxlsq.lstsq(a, b).x ** 2)


def fit_norm_jnp(a):
    return jnp.sum(jnp.linalg.lstsq(a, b)[0] ** 2)


def fit_norm_pinv(a):  # a correct (but O(M N^2)) reference
    return jnp.sum((jnp.linalg.pinv(a) @ b) ** 2)


reference = jax.grad(fit_norm_pinv)(q)
for name, f in [("jaxlsq.lstsq", fit_norm_jaxlsq), ("jnp.linalg.lstsq", fit_norm_jnp)]:
    g = jax.grad(f)(q)
    finite = bool(jnp.all(jnp.isfinite(g)))
    error = float(jnp.linalg.norm(g - reference) / jnp.linalg.norm(reference))
    print(f"gradient through {name:17s} finite: {finite!s:5s}  relative error: {error:.1e}")

# The same at the identity matrix, where jnp.linalg.lstsq's gradient is NaN.
g_eye = jax.grad(lambda a: jnp.sum(jnp.linalg.lstsq(a, b[:4])[0] ** 2))(jnp.eye(4))
g_ours = jax.grad(lambda a: jnp.sum(jaxlsq.lstsq(a, b[:4]).x ** 2))(jnp.eye(4))
print(
    f"at the identity: jnp.linalg.lstsq gradient has NaN: {bool(jnp.any(jnp.isnan(g_eye)))}, "
    f"jaxlsq's is finite: {bool(jnp.all(jnp.isfinite(g_ours)))}"
)

# 3. A picture, when matplotlib is installed.
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib not installed: no plot (pip install 'jaxlsq[examples]')")
else:
    grid = np.linspace(-0.5, 3.5, 50)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(x_data, y_data, "o", label="data")
    ax.plot(grid, m * grid + c, "-", label=f"fit: y = {m:.2f} x {c:+.2f}")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend()
    fig.tight_layout()
    fig.savefig("quickstart.png", dpi=120)
    print("saved quickstart.png")
