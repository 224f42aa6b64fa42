"""Matrix factories, reference answers and tolerances shared by the tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlsq import _full_rank

# shard_map for the tests, on every JAX that pyproject admits
try:
    from jax import shard_map  # noqa: F401
except ImportError:  # JAX before 0.7
    from jax.experimental.shard_map import shard_map  # noqa: F401


def run_with_xla_defaults(script: str, timeout: float) -> list[str]:
    """Run a Python script in a fresh process on the CPU with XLA's default flags (one device, the
    default thread pool and code generation: none of conftest.py's settings), and return the words
    it printed; a hang past timeout seconds or a failure fails the calling test, with what the
    script printed before it."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    try:
        run = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as err:
        done = err.stdout.decode() if isinstance(err.stdout, bytes) else err.stdout or ""
        pytest.fail(f"hung (no result in {timeout} s); printed before the hang: {done!r}")
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.split()


# Relative tolerances by dtype for solutions and derivatives of well-posed problems.
RTOL = {
    np.dtype(np.float32): 2e-4,
    np.dtype(np.complex64): 2e-4,
    np.dtype(np.float64): 1e-10,
    np.dtype(np.complex128): 1e-10,
}


def rtol(dtype) -> float:
    return RTOL[np.dtype(dtype)]


def randn(rng: np.random.Generator, shape, complex_: bool = False) -> np.ndarray:
    x = rng.standard_normal(shape)
    if complex_:
        x = x + 1j * rng.standard_normal(shape)
    return x


def orthonormal(rng, m, k, complex_=False) -> np.ndarray:
    """An m x k matrix with orthonormal columns (k <= m)."""
    q, _ = np.linalg.qr(randn(rng, (m, k), complex_))
    return q


def with_singular_values(rng, m, n, s, complex_=False) -> np.ndarray:
    """An m x n matrix U diag(s) V^H with random orthonormal U, V; len(s) <= min(m, n)."""
    s = np.asarray(s, dtype=float)
    u = orthonormal(rng, m, len(s), complex_)
    v = orthonormal(rng, n, len(s), complex_)
    return (u * s) @ v.conj().T


def low_rank(rng, m, n, r, complex_=False) -> np.ndarray:
    return randn(rng, (m, r), complex_) @ randn(rng, (r, n), complex_)


def dummy_trap(rng, groups=3, per_group=4) -> np.ndarray:
    """One-hot group indicators plus an intercept column: rank = groups, N = groups + 1."""
    labels = np.repeat(np.arange(groups), per_group)
    rng.shuffle(labels)
    onehot = np.eye(groups)[labels]
    return np.concatenate([onehot, np.ones((len(labels), 1))], axis=1)


def battery(rng, complex_=False) -> dict[str, tuple[np.ndarray, float | None]]:
    """The derivative battery: name -> (matrix, rcond), each with exactly known rank."""
    zero_col = randn(rng, (8, 3), complex_)
    zero_col[:, 1] = 0
    dup = randn(rng, (8, 4), complex_)
    dup[:, 3] = dup[:, 1]
    return {
        "identity": (np.eye(5), None),
        "orthonormal_columns": (orthonormal(rng, 10, 4, complex_), None),
        "zero_column": (zero_col, None),
        "zero_matrix": (np.zeros((4, 3)), None),
        "duplicated_column": (dup, None),
        "dummy_variable_trap": (dummy_trap(rng), None),
        "tall_rank_deficient": (low_rank(rng, 10, 5, 2, complex_), None),
        "wide_rank_deficient": (low_rank(rng, 4, 9, 2, complex_), None),
        "repeated_singular_values": (
            with_singular_values(rng, 8, 5, [3, 3, 3, 0.5, 0.5], complex_),
            None,
        ),
        "tiny_singular_value_cut": (
            with_singular_values(rng, 7, 4, [2, 1, 0.5, 1e-5], complex_),
            1e-3,
        ),
    }


def pinv_solve(a, b, rcond):
    """Reference x = pinv(a) @ b through jnp.linalg.pinv's own derivative rule (float64)."""
    if rcond is None:
        rcond = np.finfo(np.float64).eps * max(a.shape[-2:])
    return jnp.matmul(jnp.linalg.pinv(a, rtol=rcond), b, precision=jax.lax.Precision.HIGHEST)


def assert_close(actual, desired, rtol, atol_scale=1.0, err_msg=""):
    """Relative closeness scaled by the size of the reference, as for derivatives."""
    actual = np.asarray(actual)
    desired = np.asarray(desired)
    assert actual.shape == desired.shape, (actual.shape, desired.shape, err_msg)
    assert np.all(np.isfinite(actual)), f"non-finite values {err_msg}"
    scale = max(np.max(np.abs(desired), initial=0.0), atol_scale)
    np.testing.assert_allclose(actual, desired, rtol=0, atol=rtol * scale, err_msg=err_msg)


def assert_same_to_rounding(actual, desired, rtol=1e-12, err_msg=""):
    """Equal up to rounding, each problem (leading index) against its own largest entry; NaN
    exactly where desired is NaN. For two programs that compute the same thing in another order
    (a batch whole or in chunks): jaxlib 0.10.2 gives them bit for bit, 0.6.0 rounds the
    elementwise work of a loop differently (to 1e-16 in x, 1e-13 in gradients)."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert actual.shape == desired.shape, (actual.shape, desired.shape, err_msg)
    for i, (got, want) in enumerate(zip(actual, desired)):
        nan = np.isnan(want)
        np.testing.assert_array_equal(np.isnan(got), nan, err_msg=f"{err_msg} problem {i}")
        scale = np.max(np.abs(want[~nan]), initial=0.0)
        np.testing.assert_allclose(
            got[~nan], want[~nan], rtol=0, atol=rtol * scale, err_msg=f"{err_msg} problem {i}"
        )


SVD_CALL = re.compile(r'custom_call_target="[^"]*(gesdd|gesvd|svd)[^"]*"', re.IGNORECASE)
QR_CALL = re.compile(r'custom_call_target="[^"]*geqrf[^"]*"', re.IGNORECASE)


def compiled(f, *args):
    return jax.jit(f).lower(*args).compile()


VALUES_ONLY = re.compile(r"mode = 78 ")  # LAPACK's jobz = 'N': singular values, no vectors


def count_svds(f, *args, values_only: bool = False) -> int:
    """SVD calls (LAPACK or cuSOLVER) with vectors in the compiled program of f(*args); with
    values_only=True, the calls for singular values alone instead."""
    lines = [line for line in compiled(f, *args).as_text().splitlines() if SVD_CALL.search(line)]
    return sum(bool(VALUES_ONLY.search(line)) == values_only for line in lines)


def count_qrs(f, *args) -> int:
    """Householder QR (geqrf) calls in the compiled program of f(*args)."""
    return len(QR_CALL.findall(compiled(f, *args).as_text()))


KINDS = "all-gather|all-reduce|collective-permute|all-to-all|reduce-scatter"
COLLECTIVE = re.compile(rf"\b({KINDS})")  # any mention: the strict test for their absence
SIZED_COLLECTIVE = re.compile(rf"= (\w+)\[([\d,]*)\][^=]*? ({KINDS})\(")


def collectives(f, *args) -> list[str]:
    """The kinds of collective in the compiled program of f."""
    return sorted(set(COLLECTIVE.findall(compiled(f, *args).as_text())))


def collective_sizes(f, *args) -> list[tuple[str, int]]:
    """(kind, number of elements of its result) for every collective in the compiled program."""
    found = SIZED_COLLECTIVE.findall(compiled(f, *args).as_text())
    return [
        (kind, int(np.prod([int(d) for d in dims.split(",") if d] or [1])))
        for _, dims, kind in found
    ]


LAPACK_CALL = re.compile(r'custom_call_target="(lapack_\w+)"')

CALLED = re.compile(
    r"(?:calls|to_apply|body|condition|true_computation|false_computation)=%([\w.\-]+)"
    r"|branch_computations=\{([^}]*)\}"
)


def lapack_calls(f, *args) -> list[str]:
    """The LAPACK routines (CPU custom calls) in the compiled program of f(*args)."""
    return LAPACK_CALL.findall(compiled(f, *args).as_text())


def _callees(rest: str) -> list[str]:
    """The computations an HLO instruction calls (fusions, branches, loop bodies)."""
    names = []
    for single, group in CALLED.findall(rest.split(", metadata=")[0]):
        names += [single] if single else re.findall(r"%([\w.\-]+)", group)
    return names


def _computations(text: str) -> dict[str, list[tuple[str, str]]]:
    """HLO computations: name -> [(instruction name, the rest of its line)]."""
    found, current = {}, None
    for line in text.splitlines():
        head = re.match(r"^(?:ENTRY )?%([\w.\-]+) .*\{$", line)
        if head:
            current = found.setdefault(head.group(1), [])
            continue
        body = re.match(r"^\s+(?:ROOT )?%([\w.\-]+) = (.*)$", line)
        if body and current is not None:
            current.append(body.groups())
    return found


def _calls(comps: dict[str, list[tuple[str, str]]], pattern: re.Pattern) -> Callable[[str], bool]:
    """A test on the computations of comps: does one hold a line matching pattern, directly or
    through the computations it calls?"""
    memo = {}

    def calls(comp: str) -> bool:
        if comp not in memo:
            memo[comp] = False  # a computation reached again on its own path adds nothing
            memo[comp] = any(
                pattern.search(rest) or any(calls(c) for c in _callees(rest))
                for _, rest in comps.get(comp, [])
            )
        return memo[comp]

    return calls


def loops_calling_svd(f, *args) -> int:
    """How many while loops of the compiled program of f(*args) call LAPACK's SVD in their body
    (directly or through the computations it calls)."""
    comps = _computations(compiled(f, *args).as_text())
    calls_svd = _calls(comps, SVD_CALL)
    bodies = [
        body
        for lines in comps.values()
        for _, rest in lines
        if " while(" in rest.split(", metadata=")[0]
        for body in re.findall(r"body=%([\w.\-]+)", rest)
    ]
    return sum(calls_svd(body) for body in bodies)


def unordered_lapack_calls(f, *args) -> list[tuple[str, str]]:
    """Pairs of LAPACK calls in the compiled program of f that no data dependence orders (in the
    same computation; a conditional or loop whose branches call LAPACK counts as a call). jaxlib
    0.10's batched kernels can deadlock when such calls run at the same time (jaxlsq/_order.py).
    """
    comps = _computations(compiled(f, *args).as_text())
    calls_lapack = _calls(comps, LAPACK_CALL)
    pairs = []
    for lines in comps.values():
        deps = {
            name: set(re.findall(r"%([\w.\-]+)", rest.split(", metadata=")[0]))
            for name, rest in lines
        }
        nodes = [
            (name, (LAPACK_CALL.search(rest) or re.search(r" ([a-z][\w-]*)\(", rest)).group(1))
            for name, rest in lines
            if LAPACK_CALL.search(rest) or any(calls_lapack(c) for c in _callees(rest))
        ]
        ancestors = {}
        for name, _ in nodes:
            seen, stack = set(), list(deps[name])
            while stack:
                x = stack.pop()
                if x not in seen:
                    seen.add(x)
                    stack.extend(deps.get(x, ()))
            ancestors[name] = seen
        for i, (p, p_kind) in enumerate(nodes):
            for q, q_kind in nodes[i + 1 :]:
                if p not in ancestors[q] and q not in ancestors[p]:
                    pairs.append((p_kind, q_kind))
    return pairs


# The derivative battery as problems: shared by the derivative, factorization, ridge and GPU tests.
CASES = list(battery(np.random.default_rng(0)))


def problem(case, complex_, seed=0):
    """The battery matrix, its rcond, a right-hand side, a rank-preserving curve and weights."""
    rng = np.random.default_rng(seed + 1000 * CASES.index(case) + 7 * complex_)
    a, rcond = battery(rng, complex_)[case]
    a = a.astype(np.complex128 if complex_ else np.float64)
    m, n = a.shape
    b = randn(rng, (m, 2), complex_)
    u, s, vh = np.linalg.svd(a, full_matrices=False)
    cut = (rcond if rcond else np.finfo(float).eps * max(m, n)) * s[0]
    r = int(np.sum(s > cut))
    tail = (u[:, r:] * s[r:]) @ vh[r:] if r < min(m, n) else 0 * a  # what rcond cuts
    big_b, big_c = u[:, :r] * s[:r], vh[:r]
    d_b, d_c = randn(rng, big_b.shape, complex_), randn(rng, big_c.shape, complex_)
    curve = lambda t: (big_b + t * d_b) @ (big_c + t * d_c) + tail  # noqa: E731
    da = d_b @ big_c + big_b @ d_c
    db = randn(rng, b.shape, complex_)
    weights = randn(rng, (n, 2), complex_)
    # The tiny-value case: the cut singular value (1e-5) is not exactly zero, so the truncated
    # pseudo-inverse differs from the exact-rank formula by O(s_cut / s_kept) = 2e-5.
    model_error = 1e-5 / 0.5 if rcond else 0.0
    cond = s[0] / s[r - 1] if r else 1.0
    return a, b, rcond, curve, da, db, weights, model_error, cond


def loss(solve, weights):
    """A generic real scalar of x and residuals, so every entry of the Jacobian matters."""

    def f(a, b):
        x, res = solve(a, b)
        return jnp.sum(jnp.abs(x) ** 2) + jnp.sum(jnp.real(weights * x)) + 0.5 * jnp.sum(res)

    return f


def reference_solve(rcond):
    def solve(a, b):
        x = pinv_solve(a, b, rcond)
        r = b - jnp.matmul(a, x, precision=jax.lax.Precision.HIGHEST)
        return x, jnp.sum(jnp.real(r * jnp.conj(r)), axis=0)

    return solve


def tolerance(dtype, cond, model_error, order=1):
    eps = np.finfo(dtype).eps
    return max(100 * eps * cond ** (order + 1), 10 * model_error)


def gather_few(monkeypatch, request, work=None):
    """Rooms of 3 for a batch of 24 (jaxlsq._full_rank._mixed_batch), where the tests' 8 simulated
    devices would leave them out; batches of at least work (count N^3) gather, where given."""
    monkeypatch.setattr(_full_rank, "FEW_UNSETTLED", 8)
    monkeypatch.setattr(_full_rank, "_gathers_apply", lambda: True)
    if work is not None:
        monkeypatch.setattr(_full_rank, "FEW_UNSETTLED_WORK", work)
    jax.clear_caches()  # lstsq's programs traced with the usual constants
    request.addfinalizer(jax.clear_caches)  # and none traced with these stays
