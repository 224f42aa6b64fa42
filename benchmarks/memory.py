"""Resident memory that each distinct shape adds: jaxlsq.lstsq against jnp.linalg.lstsq.

Every new shape compiles a new program, which JAX keeps in its caches. Each measurement runs in
a fresh Python process: it solves a few shapes first (imports, the first compilations), reads
the process's resident set size (Linux /proc), solves --shapes more tall float32 problems of
distinct shapes (M x 7 with M = 20, 21, ..., two right-hand sides), reads it again and prints
the growth per shape. Nothing is asserted.

Run: python3 -m benchmarks.memory [--shapes 40]
"""

from __future__ import annotations

import argparse

from .first_call import in_new_process

CHILD = r"""
import gc, json, os, sys
import jax, jax.numpy as jnp, numpy as np
import jaxlsq
system, count = sys.argv[1], int(sys.argv[2])
solve = {
    "jaxlsq.lstsq, jit": jax.jit(lambda a, b: jaxlsq.lstsq(a, b)),
    "jaxlsq.lstsq, no jit": lambda a, b: jaxlsq.lstsq(a, b),
    "jnp.linalg.lstsq, jit": jax.jit(lambda a, b: jnp.linalg.lstsq(a, b)),
}[system]
rng = np.random.default_rng(0)
def resident():
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def run(m):
    a = rng.standard_normal((m, 7)).astype(np.float32)
    b = rng.standard_normal((m, 2)).astype(np.float32)
    jax.block_until_ready(solve(a, b))
for m in range(8, 14):
    run(m)
before = resident()
for m in range(20, 20 + count):
    run(m)
print(json.dumps((resident() - before) / count / 2**20))
"""

SYSTEMS = ("jaxlsq.lstsq, jit", "jaxlsq.lstsq, no jit", "jnp.linalg.lstsq, jit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=int, default=40)
    args = parser.parse_args()
    print(f"float32 M x 7, {args.shapes} shapes, one process per row")
    print("| system | MiB of resident memory per shape |")
    print("|---|---|")
    for system in SYSTEMS:
        growth = in_new_process(CHILD, system, str(args.shapes))
        print(f"| {system} | {growth:.1f} |", flush=True)


if __name__ == "__main__":
    main()
