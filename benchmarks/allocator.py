"""What page faults add to each system's time on one case: python3 -m benchmarks.allocator
[--case 10000x64x8] [--dtype float32] [--rounds 21] [--systems NAME,NAME,...]

glibc's malloc hands out a block above its mmap threshold as freshly mapped pages, each of which
faults in and is zeroed on first touch, and unmaps it when freed. The threshold starts at 128 KiB
and rises to the largest such block freed, up to 32 MiB. A compiled program whose temporary
buffers (one block per call) take more than 32 MiB therefore pays for fresh pages on every call;
one whose buffers take less usually does not, depending on what the process freed before.
python3 -m benchmarks times whatever the process state gives (and --heap with the threshold
raised).

Here both thresholds are fixed for each timed call, in one process, in a random order every
round: "mapped" (128 KiB, a worst case: every block above 128 KiB fresh on each call, and the
heap trimmed, where the default does that only above 32 MiB) and "heap" (1 GiB: buffers usually
reused. Exceptions: a thread other than the main one still gets a block above 64 MiB, glibc's
limit for its heaps, freshly mapped; some programs kept faulting on some calls). Each call follows
SETTLE_S of untimed calls in the same setting. Prints each system's median time and page faults
per call in both settings, and the ratios to jnp.linalg.lstsq's time in the same setting.
The case's systems are python3 -m benchmarks's (primal only). glibc only.
"""

from __future__ import annotations

import argparse
import platform

import numpy as np

from .__main__ import (
    BASELINE,
    HEAP_THRESHOLD,
    Case,
    malloc_thresholds,
    problem,
    settle,
    timed,
)
from .peers import available

SETTINGS = {"mapped": 128 << 10, "heap": HEAP_THRESHOLD}
DEFAULT_SYSTEMS = ("jaxlsq", BASELINE, "torch(gels)")


def parse_case(text: str) -> Case:
    """BATCHxMxN (a batch of problems) or MxN (one), with one right-hand side."""
    try:
        sizes = [int(part) for part in text.split("x")]
    except ValueError:
        sizes = []
    if len(sizes) in (2, 3) and min(sizes) > 0:
        return (
            Case("batch", *sizes[1:], batch=sizes[0]) if len(sizes) == 3 else Case("single", *sizes)
        )
    raise SystemExit(
        f"python3 -m benchmarks.allocator: --case takes MxN or BxMxN (positive sizes), got {text!r}"
    )


def use(setting: str) -> None:
    if not malloc_thresholds(SETTINGS[setting]):
        raise SystemExit(
            "python3 -m benchmarks.allocator needs glibc's mallopt (missing or refused)"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python3 -m benchmarks.allocator", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--case", default="10000x64x8")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS))
    args = parser.parse_args(argv)
    if args.rounds < 1:
        raise SystemExit(
            f"python3 -m benchmarks.allocator: --rounds takes 1 or more, got {args.rounds}"
        )
    use("heap")
    case = parse_case(args.case)
    wanted = args.systems.split(",")
    systems = [s for s in available(methods=False)[0] if s.name in wanted]
    missing = sorted(set(wanted) - {s.name for s in systems})
    if missing:
        print(f"not available here, skipped: {', '.join(missing)}")
    a, b = problem(case, np.dtype(args.dtype).type, np.random.default_rng(0))
    calls = {s.name: s.make_primal(a, b) for s in systems}
    for call in calls.values():  # compile and warm up
        settle(call)
    keys = [(setting, name) for setting in SETTINGS for name in calls]
    times = {key: [] for key in keys}
    faults = {key: [] for key in keys}
    order = np.random.default_rng(1)
    for _ in range(args.rounds):
        for i in order.permutation(len(keys)):
            setting, name = keys[i]
            use(setting)
            settle(calls[name])
            seconds, count = timed(calls[name])
            times[setting, name].append(seconds)
            faults[setting, name].append(count)
    median = {key: float(np.median(t)) for key, t in times.items()}
    print(
        f"{case.label()} {args.dtype}, {args.rounds} rounds, {platform.machine()}, "
        f"{platform.python_version()}: medians, page faults per call in parentheses"
    )
    print(
        "| system | mapped ms (worst case) | heap ms | mapped / heap | ratio to jnp, mapped | heap |"
    )
    print("|---|---|---|---|---|---|")
    for name in calls:
        cells = [
            f"{1e3 * median[s, name]:.2f} ({np.median(faults[s, name]):.0f})" for s in SETTINGS
        ]
        ratios = [
            f"{median[s, name] / median[s, BASELINE]:.2f}" if BASELINE in calls else "-"
            for s in SETTINGS
        ]
        print(
            f"| {name} | {cells[0]} | {cells[1]} | "
            f"{median['mapped', name] / median['heap', name]:.2f} | {ratios[0]} | {ratios[1]} |"
        )


if __name__ == "__main__":
    main()
