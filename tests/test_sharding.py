"""Batch sharding: problems spread over a device mesh solve locally; the devices exchange only
the batch's full-rank vote (one boolean, jaxlsq/_full_rank.py) for tall and wide problems.

conftest.py gives 8 simulated CPU devices. The compiled programs are read for collectives.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, collective_sizes, collectives, randn
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxlsq

SHAPES = {"tall_qr": (40, 6), "wide_qr": (6, 40), "near_square": (7, 6)}


def mesh_of(devices: int) -> Mesh:
    return Mesh(np.array(jax.devices()[:devices]), ("batch",))


@pytest.mark.parametrize("devices", [1, 2, 8])
@pytest.mark.parametrize("shape", SHAPES)
def test_batch_sharded_solves_stay_local(shape, devices):
    """Data never crosses devices: the solves all-reduce one boolean (the vote on the shortcut,
    taken by the plain solve)."""
    if len(jax.devices()) < devices:
        pytest.skip(f"needs {devices} devices")
    rng = np.random.default_rng(0)
    m, n = SHAPES[shape]
    a_host, b_host = randn(rng, (16, m, n)), randn(rng, (16, m, 2))
    a_host[3, :, -1] = a_host[3, :, 0]  # a rank-deficient member
    w_host = rng.uniform(0.5, 2.0, (16, m))
    spec = NamedSharding(mesh_of(devices), P("batch"))
    a, b, w = (jax.device_put(x, spec) for x in (a_host, b_host, w_host))

    def solve(a, b, w):
        plain = jaxlsq.lstsq(a, b)
        return plain, jaxlsq.lstsq(a, b, weights=w, l2_regularizer=0.1).x

    def grads(a, b, w):
        def loss(a, b, w):
            plain, weighted = solve(a, b, w)
            return jnp.sum(plain.x**2) + jnp.sum(plain.residuals) + jnp.sum(weighted**2)

        return jax.grad(loss, argnums=(0, 1, 2))(a, b, w)

    if devices > 1:  # the detector sees communication where there is some
        assert collectives(lambda a: jnp.sum(a, axis=0), a) != []
    vote = [] if devices == 1 else [("all-reduce", 1)]
    assert collective_sizes(solve, a, b, w) == vote
    assert collective_sizes(grads, a, b, w) == vote
    (plain, weighted), g = jax.jit(solve)(a, b, w), jax.jit(grads)(a, b, w)
    for out in [plain.x, plain.residuals, plain.rank, plain.singular_values, weighted, *g]:
        assert out.sharding.is_equivalent_to(spec, out.ndim), out.sharding
    (plain_ref, weighted_ref), g_ref = solve(a_host, b_host, w_host), grads(a_host, b_host, w_host)
    assert_close(plain.x, plain_ref.x, 1e-12)
    assert_close(weighted, weighted_ref, 1e-12)
    np.testing.assert_array_equal(plain.rank, plain_ref.rank)
    for got, want in zip(g, g_ref):
        assert_close(got, want, 1e-10)


def test_vmap_over_a_sharded_batch_and_a_kept_factorization():
    rng = np.random.default_rng(1)
    spec = NamedSharding(mesh_of(len(jax.devices())), P("batch"))
    a_host, b_host = randn(rng, (16, 30, 4)), randn(rng, (16, 30))
    a, b = jax.device_put(a_host, spec), jax.device_put(b_host, spec)

    def via_vmap(a, b):
        return jax.vmap(lambda a, b: jaxlsq.lstsq(a, b).x)(a, b)

    kept = jax.jit(jaxlsq.factorize)(a)  # made once, passed into later programs

    def via_kept(f, b):
        return f.solve(b[..., None])[..., 0]

    assert collective_sizes(via_vmap, a, b) == [("all-reduce", 1)]  # the vote, as above
    assert collectives(via_kept, kept, b) == []
    want = jaxlsq.lstsq(a_host, b_host[..., None]).x[..., 0]
    for got in (jax.jit(via_vmap)(a, b), jax.jit(via_kept)(kept, b)):
        assert got.sharding.is_equivalent_to(spec, got.ndim), got.sharding
        assert_close(got, want, 1e-12)
