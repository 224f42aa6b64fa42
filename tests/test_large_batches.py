"""Batched LAPACK calls run one at a time (jaxlsq/_order.py), so large batches cannot deadlock.

jaxlib 0.10's CPU kernels split a batch over the intra-op thread pool and block until it is
done; independent calls that run at the same time can take every thread and hang. Checked here:
the compiled programs of batched solves (leading dimensions and vmap, every output, first-order
derivatives, every method) order all their LAPACK calls by data dependence, and the programs
that hung on 2 cores before the ordering finish in a fresh process (without conftest's 8
simulated devices, which change how the pool runs).
"""

import jax
import jax.numpy as jnp
import pytest
from helpers import (
    compiled,
    gather_few,
    loops_calling_svd,
    run_with_xla_defaults,
    unordered_lapack_calls,
)

import jaxlsq
from jaxlsq import _full_rank


def every_output(r):
    return jnp.sum(jnp.abs(r.x) ** 2) + jnp.sum(r.residuals) + jnp.sum(r.singular_values)


def value_and_grad(solve):
    return jax.value_and_grad(lambda a, b, w: every_output(solve(a, b, w)), argnums=(0, 1, 2))


def both_solves(f, a, b):
    """A solve and an adjoint solve of one kept factorization in one program."""
    return jnp.sum(f.solve(b) ** 2) + jnp.sum(f.solve_adjoint(a[..., :1, :].mT) ** 2)


PROGRAMS = {
    "solve": lambda a, b, w: jaxlsq.lstsq(a, b),
    "gradients": value_and_grad(lambda a, b, w: jaxlsq.lstsq(a, b)),
    "ridge": value_and_grad(lambda a, b, w: jaxlsq.lstsq(a, b, l2_regularizer=0.5)),
    "weights": value_and_grad(lambda a, b, w: jaxlsq.lstsq(a, b, weights=w)),
    "qr": jax.grad(lambda a, b, w: jnp.sum(jaxlsq.lstsq(a, b, method="qr").x ** 2)),
    "qr_weights": jax.grad(
        lambda a, b, w: jnp.sum(jaxlsq.lstsq(a, b, method="qr", weights=w).x ** 2), argnums=(0, 2)
    ),
    "cholesky": jax.grad(lambda a, b, w: jnp.sum(jaxlsq.lstsq(a, b, method="cholesky").x ** 2)),
    # a Factorization's solves are matrix products (no LAPACK call), so they mix freely; its
    # differentiated singular values factor a again, a call of their own (README, "Known issues")
    "factorize_solve": jax.grad(lambda a, b, w: jnp.sum(jaxlsq.factorize(a).solve(b) ** 2)),
    "factorize_both_solves": jax.grad(lambda a, b, w: both_solves(jaxlsq.factorize(a), a, b)),
    "factorize_values": jax.grad(lambda a, b, w: jnp.sum(jaxlsq.factorize(a).singular_values)),
}


@pytest.mark.parametrize("form", ["leading", "vmap"])
@pytest.mark.parametrize("shape", [(40, 6), (6, 40), (7, 6)], ids=["tall", "wide", "square"])
@pytest.mark.parametrize("program", PROGRAMS)
def test_lapack_calls_of_a_batch_form_one_chain(program, shape, form):
    assert_one_chain(PROGRAMS[program], shape, form, count=5)


def assert_one_chain(f, shape, form, count):
    """f(a, b, w) of a batch of count problems (leading dimensions, or vmapped) orders its LAPACK
    calls."""
    m, n = shape
    a, b, w = jnp.ones((count, m, n)), jnp.ones((count, m, 2)), jnp.ones((count, m))
    assert unordered_lapack_calls(jax.vmap(f) if form == "vmap" else f, a, b, w) == []


# Second order: the Hessian in (a, b, w). Through JAX's own rules the singular values' second
# derivative left a QR rule's triangular solve unordered against an orgqr and the gesdd, and the
# qr and cholesky methods' left dozens of triangular solves unordered; the programs in
# test_large_batched_gradients_finish hung.
def by_method(method, weighted):
    return lambda a, b, w: jnp.sum(
        jaxlsq.lstsq(a, b, method=method, weights=w if weighted else None).x ** 2
    )


SECOND_ORDER = {
    "every_output": lambda a, b, w: every_output(jaxlsq.lstsq(a, b)),
    "ridge": lambda a, b, w: every_output(jaxlsq.lstsq(a, b, l2_regularizer=0.5)),
    "weights": lambda a, b, w: every_output(jaxlsq.lstsq(a, b, weights=w)),
    "factorize_values": lambda a, b, w: jnp.sum(jaxlsq.factorize(a).singular_values),
    "qr": by_method("qr", weighted=False),
    "qr_weights": by_method("qr", weighted=True),
    "cholesky": by_method("cholesky", weighted=False),
    "cholesky_weights": by_method("cholesky", weighted=True),
    "cholesky_ridge": lambda a, b, w: jnp.sum(
        jaxlsq.lstsq(a, b, method="cholesky", l2_regularizer=0.5).x ** 2
    ),
}


@pytest.mark.parametrize("form", ["leading", "vmap"])
@pytest.mark.parametrize("shape", [(12, 3), (3, 12), (4, 3)], ids=["tall", "wide", "square"])
@pytest.mark.parametrize("program", SECOND_ORDER)
def test_second_derivatives_of_a_batch_form_one_chain(program, shape, form):
    assert_one_chain(jax.hessian(SECOND_ORDER[program], argnums=(0, 1, 2)), shape, form, count=3)


@pytest.mark.parametrize("form", ["leading", "vmap"])
@pytest.mark.parametrize("program", ["solve", "gradients", "qr", "qr_weights"])
def test_a_batch_factored_in_chunks_keeps_one_chain(monkeypatch, request, program, form):
    """The joint QR taken a chunk of problems at a time (a lax.map loop, here one problem a
    chunk), by the plain solve and by method="qr": the loop and the solve's later LAPACK calls
    stay in one chain."""
    monkeypatch.setattr(_full_rank, "CHUNK_BYTES", 1)
    monkeypatch.setattr(_full_rank, "UNROLLED_BATCH", 1)
    monkeypatch.setattr(_full_rank, "_chunks_apply", lambda: True)  # the tests simulate 8 devices
    jax.clear_caches()  # lstsq's programs traced with the usual constants
    request.addfinalizer(jax.clear_caches)  # and none traced with these stays
    a, b, w = jnp.ones((6, 40, 6)), jnp.ones((6, 40, 2)), jnp.ones((6, 40))
    f = PROGRAMS[program]
    if form == "vmap":
        f = jax.vmap(f)
    assert " while(" in compiled(f, a, b, w).as_text()
    assert unordered_lapack_calls(f, a, b, w) == []


@pytest.mark.parametrize("form", ["leading", "vmap"])
@pytest.mark.parametrize("shape", [(12, 3), (3, 12)], ids=["tall", "wide"])
@pytest.mark.parametrize("program", ["solve", "gradients", "hessian"])
def test_a_batch_gathering_few_unsettled_problems_keeps_one_chain(
    monkeypatch, request, program, shape, form
):
    """The mixed branch that takes the SVD of the unsettled problems alone (a loop over rooms of 3
    of the 24 problems; _full_rank._mixed_batch): its SVD and the whole batch's singular values
    stay in one chain, to second order."""
    gather_few(monkeypatch, request, work=2)
    m, n = shape
    a, b, w = jnp.ones((24, m, n)), jnp.ones((24, m, 2)), jnp.ones((24, m))
    if program == "hessian":
        f = jax.hessian(SECOND_ORDER["every_output"], argnums=(0, 1, 2))
    else:
        f = PROGRAMS[program]
    if form == "vmap":
        f = jax.vmap(f)
    assert loops_calling_svd(f, a, b, w) >= 1  # the rooms' loop is there
    assert unordered_lapack_calls(f, a, b, w) == []


def test_the_checker_sees_unordered_calls():
    """Plain JAX: one QR feeding orgqr, an SVD and a triangular solve leaves three calls
    unordered."""

    def three(a, b):
        h, taus = jnp.linalg.qr(a, mode="raw")
        h = jnp.swapaxes(h, -1, -2)
        r = jnp.triu(h[..., :6, :])
        q = jax.lax.linalg.householder_product(h, taus)
        solved = jax.lax.linalg.triangular_solve(r, b[..., :6, :], left_side=True, lower=False)
        return q, jnp.linalg.svd(r, compute_uv=False), solved

    assert len(unordered_lapack_calls(three, jnp.ones((5, 40, 6)), jnp.ones((5, 40, 2)))) == 3


HUNG_BEFORE = """
import jax, jax.numpy as jnp, numpy as np, jaxlsq

# PART (a line the test puts before this text) says which of the programs below to run

rng = np.random.default_rng(0)
a = jnp.asarray(rng.standard_normal((2000, 64, 8)), jnp.float32)
b = jnp.asarray(rng.standard_normal((2000, 64, 2)), jnp.float32)
w = jnp.ones((2000, 64), jnp.float32)

def every_output(r):
    return jnp.sum(r.x ** 2) + jnp.sum(r.residuals) + jnp.sum(r.singular_values)

programs = {
    "gradients": lambda a, b: every_output(jaxlsq.lstsq(a, b)),
    "vmap": lambda a, b: every_output(jax.vmap(jaxlsq.lstsq)(a, b)),
    "ridge": lambda a, b: every_output(jaxlsq.lstsq(a, b, l2_regularizer=0.5)),
    "weights": lambda a, b: every_output(jaxlsq.lstsq(a, b, weights=w)),
}
if PART == "solves":
    for name, loss in programs.items():
        f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        for _ in range(3):
            jax.block_until_ready(f(a, b))
        print(name, "done", flush=True)

# 8,192 problems: the joint QR in four chunks of 2,048 (a lax.map loop; _full_rank.CHUNK_BYTES)
if PART == "chunks":
    a = jnp.asarray(rng.standard_normal((8192, 64, 8)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((8192, 64, 1)), jnp.float32)
    for loss in (programs["gradients"], programs["vmap"]):
        f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        for _ in range(3):
            jax.block_until_ready(f(a, b))
    print("chunks", "done", flush=True)

# Hessians per problem (vmap) of 2,000 16x6 and 6x16 problems: every output, and x by the qr
# and cholesky methods
def by_method(method):
    return lambda a, b: jnp.sum(jaxlsq.lstsq(a, b, method=method).x ** 2)

methods = [by_method("qr"), by_method("cholesky")]
shapes = {"hessians-tall": (16, 6), "hessians-wide": (6, 16)}
if PART in shapes:
    shape = shapes[PART]
    a = jnp.asarray(rng.standard_normal((2000, *shape)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((2000, shape[0], 1)), jnp.float32)
    for loss in (programs["gradients"], *methods):
        f = jax.jit(jax.vmap(jax.hessian(loss, argnums=(0, 1))))
        for _ in range(3):
            jax.block_until_ready(f(a, b))
    print("hessians", "done", flush=True)
"""


# Each part in a process of its own, so that pytest-xdist's workers can share them (one process
# for all of them took about 2 minutes, the suite's longest test by far; alone, 2 cores, the
# solves took 26 s, the chunks 23 and the Hessians of both shapes 60).
HUNG_BEFORE_PARTS = {
    "solves": ("gradients", "vmap", "ridge", "weights"),
    "chunks": ("chunks",),
    "hessians-tall": ("hessians",),
    "hessians-wide": ("hessians",),
}


@pytest.mark.parametrize("part", list(HUNG_BEFORE_PARTS))
def test_large_batched_gradients_finish(part):
    """value_and_grad through every output of 2,000 64x8 float32 problems (solves: the programs
    that hung on 2 cores before the ordering), and of 8,192 (chunks: factored in chunks), and the
    Hessians of 2,000 small problems (hessians-tall and -wide: which hung before the values and
    the qr and cholesky methods took their derivatives by products), in a fresh process with the
    default thread pool."""
    script = f"PART = {part!r}\n" + HUNG_BEFORE
    assert run_with_xla_defaults(script, timeout=240) == [
        w for name in HUNG_BEFORE_PARTS[part] for w in (name, "done")
    ]
