"""Batch sharding: problems spread over a device mesh solve locally; the devices exchange only
the batch's full-rank vote (one boolean, jaxlsq/_full_rank.py) for tall and wide problems.

conftest.py gives 8 simulated CPU devices. The compiled programs are read for collectives.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close, collective_sizes, collectives, randn, shard_map
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


def _grad_under_shard_map() -> bool:
    """Whether this JAX takes jax.grad of a loss inside shard_map (0.6 does not, for plain JAX
    code too: the varying loss's cotangent seed is typed unvarying)."""
    mesh = mesh_of(1)
    f = shard_map(
        jax.grad(lambda a: jnp.sum(a**2)), mesh=mesh, in_specs=P("batch"), out_specs=P("batch")
    )
    try:
        jax.eval_shape(f, jax.ShapeDtypeStruct((2,), jnp.float32))
    except ValueError:
        return False
    return True


# Two devices at most: each device's batched LAPACK calls run beside the other's, and jaxlib 0.10's
# CPU kernels can hang once three of them wait at a time on 2 cores (jaxlsq/_order.py; plain
# jnp.linalg chains under shard_map hang the same way on 4 simulated devices).
@pytest.mark.parametrize("devices", [1, 2])
@pytest.mark.parametrize("shape", SHAPES)
def test_lstsq_under_shard_map_solves_each_shard(shape, devices):
    """Inside shard_map each device solves its own problems with its own full-rank vote (no
    collective), as jit does the whole batch: the same answers to rounding, derivatives included.
    Its lax.cond branches must vary alike over the mesh axis (before, every form failed to trace:
    the shortcut's identities and full rank were constants, the other branch's varied), also
    where only b is sharded and one replicated matrix serves every problem."""
    if len(jax.devices()) < devices:
        pytest.skip(f"needs {devices} devices")
    rng = np.random.default_rng(2)
    m, n = SHAPES[shape]
    a_host, b_host = randn(rng, (8, m, n)), randn(rng, (8, m, 2))
    a_host[1, :, -1] = a_host[1, :, 0]  # a rank-deficient member, in the first shard
    mesh = mesh_of(devices)
    spec = NamedSharding(mesh, P("batch"))
    a, b = (jax.device_put(x, spec) for x in (a_host, b_host))

    def loss(a, b):
        return jnp.sum(jaxlsq.lstsq(a, b).x ** 2)

    forms = {
        "outputs": lambda a, b: tuple(jaxlsq.lstsq(a, b)),
        "vmap": jax.vmap(lambda a, b: jaxlsq.lstsq(a, b).x),
    }
    if _grad_under_shard_map():
        forms["grad"] = jax.grad(loss, argnums=(0, 1))
        forms["hessian in b"] = jax.vmap(jax.hessian(loss, argnums=1))  # each problem's own
    one = jax.device_put(a_host[1], NamedSharding(mesh, P()))  # one (rank-deficient) matrix
    forms["one a, b sharded"] = (lambda a, b: jaxlsq.lstsq(a, b).x, (one, a_host[1]))
    forms["vmap over b, one a"] = (
        jax.vmap(lambda a, b: jaxlsq.lstsq(a, b).x, in_axes=(None, 0)),
        (one, a_host[1]),
    )
    for name, f in forms.items():
        f, (a_in, a_ref) = f if isinstance(f, tuple) else (f, (a, a_host))
        specs = (P() if a_in.ndim == 2 else P("batch"), P("batch"))
        per_shard = shard_map(f, mesh=mesh, in_specs=specs, out_specs=P("batch"))
        assert collectives(per_shard, a_in, b) == [], name
        got, want = jax.jit(per_shard)(a_in, b), jax.jit(f)(a_ref, b_host)
        for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            if g.dtype.kind == "i":
                np.testing.assert_array_equal(g, w, err_msg=name)
            else:
                assert_close(g, w, 1e-10, err_msg=name)


@pytest.mark.parametrize("option", ["plain", "wide", "ridge", "qr"])
def test_rank_and_values_of_one_replicated_a_are_replicated_under_shard_map(option):
    """One replicated a for a sharded b: rank and singular values depend on a alone, and
    jnp.linalg.lstsq's (or jaxlsq.factorize's) can leave shard_map replicated (out_specs P()).
    jaxlsq.lstsq's were typed to vary as b does (R from the joint QR of [a, b], the values
    ordered after x): P() failed to trace (found by a review). They now take the first device's
    values, one psum."""
    if len(jax.devices()) < 2:
        pytest.skip("needs 2 devices")
    rng = np.random.default_rng(3)
    m, n = (3, 6) if option == "wide" else (6, 3)
    a, b = randn(rng, (m, n)), randn(rng, (2, m, 1))
    kw = {"ridge": {"l2_regularizer": 0.5}, "qr": {"method": "qr"}}.get(option, {})
    mesh = mesh_of(2)

    def f(a, b):
        result = jaxlsq.lstsq(a, b[0], **kw)
        return result.x[None], result.rank, result.singular_values

    per_shard = shard_map(
        f, mesh=mesh, in_specs=(P(), P("batch")), out_specs=(P("batch"), P(), P())
    )
    x, rank, s = jax.jit(per_shard)(a, b)
    assert int(rank) == 3
    if option != "qr":  # the methods compute no singular values (NaN)
        assert_close(s, np.linalg.svd(a, compute_uv=False), 1e-10)
    for i in range(2):  # NumPy's minimum-norm solution, the normal equations for ridge
        if option == "ridge":
            want = np.linalg.solve(a.T @ a + 0.5 * np.eye(n), a.T @ b[i])
        else:
            want = np.linalg.lstsq(a, b[i], rcond=None)[0]
        assert_close(x[i], want, 1e-10)


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
