"""Learn the ridge strength by gradient descent on a validation loss, through the solver.

The inner problem fits a degree-14 polynomial to noisy samples with ridge regression,
x(lam) = argmin ||A x - y||^2 + lam ||x||^2; the outer problem picks lam to minimize the error on
held-out points. jax.grad differentiates the validation loss through jaxlsq.lstsq with respect
to lam (bilevel optimization). The design repeats one column, so it is rank-deficient: the
gradient stays finite and exact anyway. A regularization path from one SVD (an array of lam)
checks the answer against a grid search.

Run: python3 examples/ridge_tuning.py
"""

import jax
import jax.numpy as jnp
import numpy as np

import jaxlsq

jax.config.update("jax_enable_x64", True)

rng = np.random.default_rng(0)


def truth(t):
    return np.sin(3 * t) + 0.5 * t


def design(t, degree=14):
    columns = [t**k for k in range(degree + 1)]
    return jnp.stack(columns + [columns[1]], axis=1)  # the linear column twice: rank-deficient


t_train = rng.uniform(-1, 1, 30)
t_valid = rng.uniform(-1, 1, 200)
y_train = truth(t_train) + 0.3 * rng.standard_normal(t_train.shape)
y_valid = truth(t_valid) + 0.3 * rng.standard_normal(t_valid.shape)
a_train, a_valid = design(t_train), design(t_valid)


def validation_loss(log_lam):
    x = jaxlsq.lstsq(a_train, y_train, l2_regularizer=jnp.exp(log_lam)).x
    return jnp.mean((a_valid @ x - y_valid) ** 2)


loss_and_grad = jax.jit(jax.value_and_grad(validation_loss))
log_lam = jnp.log(1e-8)  # start close to the unregularized (overfitting) fit
mean, square, history = 0.0, 0.0, []
for step in range(1, 201):  # Adam on log lam: the loss is flat in lam over decades
    loss, grad = loss_and_grad(log_lam)
    history.append((float(jnp.exp(log_lam)), float(loss), bool(jnp.isfinite(grad))))
    mean, square = 0.9 * mean + 0.1 * grad, 0.999 * square + 0.001 * grad**2
    step_size = (mean / (1 - 0.9**step)) / (jnp.sqrt(square / (1 - 0.999**step)) + 1e-12)
    log_lam = log_lam - 0.2 * step_size
lam_gd, loss_gd = float(jnp.exp(log_lam)), float(validation_loss(log_lam))
print(f"start:            lam = {history[0][0]:.1e}, validation MSE = {history[0][1]:.4f}")
print(f"gradient descent: lam = {lam_gd:.2e}, validation MSE = {loss_gd:.4f} (200 Adam steps)")
print(f"gradient finite at every step: {all(h[2] for h in history)}")

# The same question by brute force: the whole regularization path from one factorization.
lams = np.logspace(-10, 2, 400)
path = jaxlsq.lstsq(a_train, y_train, l2_regularizer=lams).x  # (400, N): one SVD, 400 filters
grid_losses = np.mean((np.asarray(path) @ np.asarray(a_valid).T - y_valid) ** 2, axis=1)
best = int(np.argmin(grid_losses))
print(f"grid search:      lam = {lams[best]:.2e}, validation MSE = {grid_losses[best]:.4f}")
print(f"gradient descent minus grid-search validation MSE: {loss_gd - grid_losses[best]:+.1e}")

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("matplotlib not installed: no plot (pip install 'jaxlsq[examples]')")
else:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.loglog(lams, grid_losses, "-", label="validation MSE (regularization path)")
    iterates = np.array([h[:2] for h in history])
    left.loglog(iterates[:, 0], iterates[:, 1], ".", ms=4, label="gradient descent iterates")
    left.axvline(lam_gd, color="k", lw=0.8, ls="--")
    left.set_xlabel("lam")
    left.set_ylabel("validation MSE")
    left.legend(fontsize=8)
    grid = np.linspace(-1, 1, 300)
    for lam, style in [(1e-8, ":"), (lam_gd, "-")]:
        x = jaxlsq.lstsq(a_train, y_train, l2_regularizer=lam).x
        right.plot(grid, design(grid) @ x, style, label=f"fit, lam = {lam:.1e}")
    right.plot(t_train, y_train, "o", ms=3, label="training points")
    right.plot(grid, truth(grid), "k-", lw=0.8, label="truth")
    right.set_ylim(-2.5, 2.5)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig("ridge_tuning.png", dpi=120)
    print("saved ridge_tuning.png")
