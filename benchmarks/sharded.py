"""Row-sharded least squares (TSQR): time and bytes communicated against the device count.

For one tall problem (default M = 2**22 rows, N = 64, K = 1, float32), times
jaxlsq.sharded_lstsq on meshes of 1, 2, 4 and 8 devices and jaxlsq.lstsq on one device (medians
of interleaved rounds after compilation), and reads the bytes that cross devices from each
compiled program's collectives. On a CPU the devices are simulated (they share its cores, so
the times show overhead, not speed-up); on a multi-GPU machine they are real.

Run: python3 -m benchmarks.sharded [--rows 4194304] [--cols 64] [--rounds 5]
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxlsq  # noqa: E402

COLLECTIVE = re.compile(
    r"= (\w+)\[([\d,]*)\][^=]*? (all-gather|all-reduce|collective-permute|all-to-all|reduce-scatter)\("
)
BYTES = {"f32": 4, "f64": 8, "c64": 8, "c128": 16, "s32": 4, "pred": 1}


def communicated_bytes(f, *args) -> int:
    """Bytes of every collective's result in the compiled program (what each device receives)."""
    text = jax.jit(f).lower(*args).compile().as_text()
    total = 0
    for dtype, dims, _ in COLLECTIVE.findall(text):
        total += BYTES.get(dtype, 8) * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2**22)
    parser.add_argument("--cols", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    m, n = args.rows, args.cols
    devices = jax.devices()
    key1, key2 = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key1, (m, n), jnp.float32)
    b = jax.random.normal(key2, (m,), jnp.float32)
    systems = {"jaxlsq.lstsq, 1 device": (jax.jit(lambda a, b: jaxlsq.lstsq(a, b).x), a, b, 0)}
    for p in (1, 2, 4, 8):
        if p > len(devices):
            continue
        mesh = Mesh(np.array(devices[:p]), ("rows",))
        rows = NamedSharding(mesh, P("rows"))
        a_p, b_p = jax.device_put(a, rows), jax.device_put(b, rows)

        def solve(a, b, mesh=mesh):
            return jaxlsq.sharded_lstsq(a, b, mesh=mesh, axis_name="rows").x

        systems[f"sharded_lstsq, {p} devices"] = (
            solve,
            a_p,
            b_p,
            communicated_bytes(solve, a_p, b_p),
        )
    times = {name: [] for name in systems}
    for f, a_s, b_s, _ in systems.values():
        jax.block_until_ready(f(a_s, b_s))
    rng = np.random.default_rng(0)
    names = list(systems)
    for _ in range(args.rounds):
        for i in rng.permutation(len(names)):
            f, a_s, b_s, _ = systems[names[i]]
            start = time.perf_counter()
            jax.block_until_ready(f(a_s, b_s))
            times[names[i]].append(time.perf_counter() - start)
    base = float(np.median(times[names[0]]))
    print(
        f"jax {jax.__version__}, {platform.machine()}, {len(devices)} {devices[0].platform} "
        f"device(s), float32, M = {m}, N = {n}, K = 1, medians of {args.rounds} rounds"
    )
    print("| system | median s | ratio to 1 device | bytes across devices | rows' bytes |")
    print("|---|---|---|---|---|")
    for name, (_, _, _, sent) in systems.items():
        med = float(np.median(times[name]))
        print(f"| {name} | {med:.3f} | {med / base:.2f} | {sent:,} | {4 * m * n:,} |")


if __name__ == "__main__":
    main()
