"""Learn radial basis features by jax.grad through an inner least-squares fit.

A model y(t) = sum_j x_j exp(-(t - c_j)^2 / (2 w_j^2)) is linear in the weights x and nonlinear in
the centres c and widths w. Variable projection: for given (c, w) the best x is a least-squares
solve, so the loss is a function of (c, w) alone, differentiated by jax.grad through
jaxlsq.lstsq (Golub & Pereyra 1973), and gradient descent (Adam) moves the features to fit the
curve. The gradient is checked against the pseudo-inverse reference, also at a rank-deficient
design (two features on top of each other), where it stays finite and exact.

Run: python3 examples/learned_features.py
"""

import jax
import jax.numpy as jnp
import numpy as np

import jaxlsq

jax.config.update("jax_enable_x64", True)

rng = np.random.default_rng(1)
t = np.sort(rng.uniform(-3, 3, 120))
clean = np.exp(-((t - 1.2) ** 2)) - 0.8 * np.exp(-4 * (t + 1.0) ** 2)
y = clean + 0.05 * rng.standard_normal(t.size)


def features(params, t):
    centres, log_widths = params
    return jnp.exp(-0.5 * ((t[:, None] - centres) / jnp.exp(log_widths)) ** 2)


def loss(params, solver):
    a = features(params, t)
    x = solver(a, y)
    return jnp.mean((a @ x - y) ** 2)


ours = lambda a, b: jaxlsq.lstsq(a, b).x  # noqa: E731
reference = lambda a, b: jnp.linalg.pinv(a) @ b  # noqa: E731 (correct, O(M N^2))


def gradient_error(params):
    g, g_ref = jax.grad(loss)(params, ours), jax.grad(loss)(params, reference)
    leaves = zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref))
    return max(float(jnp.max(jnp.abs(x - r)) / jnp.max(jnp.abs(r))) for x, r in leaves)


params = (jnp.array([-2.0, -0.5, 0.5, 2.0]), jnp.log(jnp.full(4, 0.7)))
merged = (jnp.array([-2.0, 0.5, 0.5, 2.0]), params[1])  # two identical features
print(f"rank of the starting design: {int(jaxlsq.lstsq(features(params, t), y).rank)} of 4")
print(f"gradient vs pinv reference at the start: relative error {gradient_error(params):.1e}")
print(
    f"with two features merged (rank {int(jaxlsq.lstsq(features(merged, t), y).rank)} of 4): "
    f"relative error {gradient_error(merged):.1e}"
)

# Adam on (centres, log widths), written out to keep the example free of other packages.
value_and_grad = jax.jit(jax.value_and_grad(lambda p: loss(p, ours)))
m = jax.tree_util.tree_map(jnp.zeros_like, params)
v = jax.tree_util.tree_map(jnp.zeros_like, params)
history = []
for step in range(1, 401):
    value, g = value_and_grad(params)
    history.append(float(value))
    m = jax.tree_util.tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
    v = jax.tree_util.tree_map(lambda v, g: 0.999 * v + 0.001 * g**2, v, g)
    params = jax.tree_util.tree_map(
        lambda p, m, v: p - 0.03 * (m / (1 - 0.9**step)) / (jnp.sqrt(v / (1 - 0.999**step)) + 1e-8),
        params,
        m,
        v,
    )
final = float(loss(params, ours))
print(f"mean squared error: start {history[0]:.4f}, after 400 Adam steps {final:.4f}")
print(f"(the noise variance is {0.05**2:.4f})")
print("centres:", np.round(np.asarray(params[0]), 2), "widths:", np.round(np.exp(params[1]), 2))

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib not installed: no plot (pip install 'jaxlsq[examples]')")
else:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    grid = np.linspace(-3, 3, 400)
    a = features(params, t)
    x = jaxlsq.lstsq(a, y).x
    right.plot(t, y, ".", ms=3, label="data")
    right.plot(grid, features(params, grid) @ x, "-", label="learned features fit")
    for j in range(4):
        right.plot(grid, x[j] * features(params, grid)[:, j], ":", lw=0.8)
    right.legend(fontsize=8)
    left.semilogy(history)
    left.set_xlabel("Adam step")
    left.set_ylabel("mean squared error")
    fig.tight_layout()
    fig.savefig("learned_features.png", dpi=120)
    print("saved learned_features.png")
