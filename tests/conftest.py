"""Test configuration, set before JAX is imported: float64 on, 8 simulated CPU devices, and
LLVM's optimization level 0 for XLA's generated code.

Most of the suite's time is XLA compiling small programs once each. LLVM's optimizations change
how fast the generated code runs, not what it computes (XLA enables no fast-math), and these
tests check what it computes: at level 0 a Hessian program compiled in about 0.75 s where it
took 1.15, and the suite (-n 2, 2 cores, both passing) took 591 s where it took 722 s at the
default level on the same day. To run the tests at XLA's default level instead, set the
flag yourself: XLA_FLAGS=--xla_backend_optimization_level=2 python3 -m pytest -n 2.
"""

import os

_flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
if "--xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop JAX's compiled programs after each test module. The code of the programs XLA's CPU
    backend compiles stays in memory maps while JAX caches them; a worker that runs half of the
    suite would otherwise gather about as many maps as Linux allows one process (vm.max_map_count,
    65530 by default; one worker's modules added up to 72,265), past which LLVM aborts the next
    compilation ("Unable to allocate section memory!")."""
    yield
    jax.clear_caches()
