"""Test configuration, set before JAX is imported: float64 on, 8 simulated CPU devices, and two
XLA options that make compiling faster: LLVM's optimization level 0 for the generated code, and
XLA's CPU code generation without the MLIR fusion emitters (which jaxlib 0.10 uses by default).

Most of the suite's time is XLA compiling small programs once each. Both options change how fast
the generated code runs and how long compiling takes, not what it computes beyond the rounding of
some operations (XLA enables no fast-math), and these tests check what it computes, to
tolerances set by the problems' conditioning. At level 0 a Hessian program compiled in about
0.75 s where it took 1.15, and the suite (-n 2, 2 cores, both passing) took 591 s where it took
722 s at the default level on the same day. Without the fusion emitters, 15 programs of lstsq (x,
value_and_grad and the Hessian for five shapes) compiled in 3.5 s where they took 8.8 to 12.4 s
with them (jaxlib 0.10.2; jaxlib 0.6.0 took 3.3 s either way), and the suite took 13:36 where it
took 25:50 (2 cores, 2026-12-07). A claim on bits that the code generation decides is checked in
a fresh process with XLA's defaults (helpers.run_with_xla_defaults). To run the tests with XLA's
defaults instead, set the flags yourself: XLA_FLAGS="--xla_backend_optimization_level=2
--xla_cpu_use_fusion_emitters=true" python3 -m pytest -n 2.
"""

import os
import subprocess
import sys


def _known_to_xla(flag):
    """Whether this jaxlib's XLA takes flag: XLA stops the process at a flag it does not know, so a
    later jaxlib that drops one would otherwise stop every test. Asked once, in a fresh process;
    pytest-xdist's workers inherit the answer in XLA_FLAGS."""
    env = dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS="cpu")
    probe = [sys.executable, "-c", "import jax; jax.devices()"]
    return subprocess.run(probe, env=env, capture_output=True, timeout=300).returncode == 0


_flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
if "--xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
_NO_FUSION_EMITTERS = "--xla_cpu_use_fusion_emitters=false"
if "--xla_cpu_use_fusion_emitters" not in _flags and _known_to_xla(_NO_FUSION_EMITTERS):
    _flags += " " + _NO_FUSION_EMITTERS
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
