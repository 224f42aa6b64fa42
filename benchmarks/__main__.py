"""Benchmark jaxlsq against its peers: python3 -m benchmarks [--quick] [--out DIR].

Inside one process, for every case (shape, dtype) and every system: compile and warm up, then
time repeated rounds with the systems interleaved, and report the median, the ratio to
jnp.linalg.lstsq's median, and the accuracy (max relative error of x against float64 NumPy, and
against that answer refined with residuals in extended precision: for float64 data NumPy's own
rounding is the size of the errors compared).
Writes a Markdown table to stdout, results.json and ratios.png (when matplotlib is installed)
to --out. Each cell also records the minor page faults per call (median), mostly memory mapped
afresh and zeroed during the call: with glibc's default malloc a compiled program's temporary
buffers above 32 MiB are mapped anew on every call (jit(vmap(jnp.linalg.lstsq)) on 10,000 64x8
float32 problems: 10,635 faults a call). --heap raises malloc's thresholds so that buffers are
usually reused instead (python3 -m benchmarks.allocator compares the two in one process).

Each system's cell is timed on INSTANCES programs, each made (and, for JAX, compiled) afresh
from its own copy of the inputs, every round, and its median is that of all their calls. A
compiled program's speed depends on where its buffers land: on 2 cores, of six compilations of
jit(vmap(jnp.linalg.lstsq)) for 10,000 64x8 float32 problems, each timed 9 times with its own
copy of the inputs in one process, three took 65.6-74.0 ms a call and three 109.3-112.5 ms, each
steadily; jaxlsq's six took 18.3-19.2 ms. One program alone would have made that cell's ratio
anything from 0.16x to 0.29x.

Each round takes the thread pools (JAX's, NumPy's OpenBLAS, SciPy's, torch's) in a random order,
and each pool's systems in a random order, back to back. A pool's turn starts with SETTLE_S of
untimed calls: the previous pool's idle workers stop spinning meanwhile (OpenBLAS spins for
about 0.1 s after a call), and this pool's are awake and running. Measured on 2 cores: a jaxlsq
solve timed straight after NumPy's lstsq took 1.85x its time after another jaxlsq solve, and a
200x50 torch solve after 0.2 s idle 12 ms, where it takes 0.3-1 ms after 0.2 s of its own calls.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import resource  # Unix: page-fault counts
except ImportError:  # pragma: no cover
    resource = None

# torch's OpenMP threads otherwise spin after each call and steal the cores from whatever runs
# next; set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # float64 cases; float32 ones stay float32

import numpy as np  # noqa: E402

from .accuracy import refined  # noqa: E402
from .peers import available, to_host  # noqa: E402
from .summary import figure  # noqa: E402

BASELINE = "jnp.linalg.lstsq"
SETTLE_S = 0.2  # untimed calls at the start of each pool's turn
QUICK_SETTLE_S = 0.1  # --quick: OpenBLAS's spinning (about 0.1 s) still ends; 7 s less in all
INSTANCES = 2  # programs per system and cell (see above); --quick: 1


@dataclass(frozen=True)
class Case:
    name: str
    m: int
    n: int
    k: int = 1
    batch: int = 0  # 0: a single problem
    deficient: float = 0.0  # the share of a batch's problems with two equal columns
    only: tuple[str, ...] = ()  # the dtypes it runs in, of those asked for (empty: all of them)

    def label(self) -> str:
        shape = f"{self.m}x{self.n}" + (f", K={self.k}" if self.k > 1 else "")
        label = f"{self.batch} x ({shape})" if self.batch else shape
        return label + (f", {self.deficient:.0%} rank-deficient" if self.deficient else "")


FULL = [
    Case("tall", 200, 50),
    Case("tall", 2000, 200),
    Case("tall", 10000, 100),
    Case("wide", 100, 2000),
    Case("square", 1000, 1000),
    Case("tall, many rhs", 2000, 200, 64),
    Case("batch", 64, 8, batch=10000),
    Case("batch", 256, 32, batch=1000),
    # real batches may hold a few degenerate problems (a repeated column), which must not cost
    # the others their fast path
    Case("batch, some rank-deficient", 64, 8, batch=10000, deficient=0.01),
]
# one dtype for each single solve, both for the batch: on the 2-core machine, in a slow hour, the
# three cases in both dtypes took 63 s, most of it building programs
QUICK = [
    Case("tall", 200, 50, only=("float32",)),
    Case("wide", 50, 400, only=("float64",)),
    Case("batch", 64, 8, batch=500),
]


def problem(case: Case, dtype, rng) -> tuple[np.ndarray, np.ndarray]:
    lead = (case.batch,) if case.batch else ()
    a = rng.standard_normal((*lead, case.m, case.n)).astype(dtype)
    b_shape = (*lead, case.m) if case.k == 1 else (*lead, case.m, case.k)
    b = rng.standard_normal(b_shape).astype(dtype)
    if case.deficient:  # evenly spread, each with its last column equal to the first
        picked = np.linspace(0, case.batch - 1, round(case.deficient * case.batch)).astype(int)
        a[picked, :, -1] = a[picked, :, 0]
    return a, b


def reference(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NumPy in float64 on the same numbers, with the cutoff of the data's own dtype; and that
    answer refined (benchmarks.accuracy), which float64 data needs: there NumPy's own rounding
    is as large as the errors being compared."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    rcond = np.finfo(a.dtype).eps * max(a.shape[-2:])
    if a.ndim == 2:
        x = np.linalg.lstsq(a64, b64, rcond=rcond)[0]
        return x, refined(a64, b64, x, rcond)
    x = np.stack([np.linalg.lstsq(ai, bi, rcond=rcond)[0] for ai, bi in zip(a64, b64)])
    return x, np.stack([refined(ai, bi, xi, rcond) for ai, bi, xi in zip(a64, b64, x)])


def relative_error(x, x_ref) -> float:
    x = to_host(x).astype(np.float64)
    return float(np.max(np.abs(x - x_ref)) / np.max(np.abs(x_ref)))


def faults() -> int | None:
    """The process's minor page faults so far (None where the platform does not count them)."""
    return None if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(f) -> tuple[float, int | None]:
    """Seconds of one call of f, and the minor page faults the whole process (every thread) took
    meanwhile: mostly fresh pages of memory being mapped and zeroed, which the call pays for
    (1-6 us each on the 2-core VM)."""
    before = faults()
    start = time.perf_counter()
    jax.block_until_ready(f())
    seconds = time.perf_counter() - start
    return seconds, None if before is None else faults() - before


# glibc's mallopt parameters
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
HEAP_THRESHOLD = 1 << 30


def malloc_thresholds(size: int) -> bool:
    """Fixes glibc malloc's mmap threshold (a block above it is mapped afresh, and unmapped when
    freed) and its trim threshold (how much freed memory the heap keeps) at size bytes, which
    also stops the mmap threshold from following the blocks freed. False where there is no
    mallopt or it refuses a value (refusing the mmap threshold, it changes nothing)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, TypeError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if os.confstr("CS_GNU_LIBC_VERSION") is None or not mallopt(M_MMAP_THRESHOLD, size):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, size))


def keep_heap() -> str:
    """Makes glibc's malloc serve blocks up to HEAP_THRESHOLD from its heap and keep up to that
    much freed memory there, so that a program's temporary buffers are reused from call to call.
    By default a block above the mmap threshold (at most 32 MiB) is mapped afresh for each call,
    and every page of it faults in and is zeroed again; the threshold also moves with what the
    process freed before, so the same call may pay for that or not. Returns a line for the
    results."""
    if not malloc_thresholds(HEAP_THRESHOLD):
        raise SystemExit("python3 -m benchmarks: --heap needs glibc's mallopt (missing or refused)")
    return f"glibc malloc, mmap and trim thresholds raised to {HEAP_THRESHOLD >> 20} MiB (--heap)"


def settle(f, seconds: float = SETTLE_S) -> None:
    """Calls f, untimed, for the given seconds (at least once)."""
    end = time.perf_counter() + seconds
    jax.block_until_ready(f())
    while time.perf_counter() < end:
        jax.block_until_ready(f())


_STARTED = time.perf_counter()


def progress(text: str) -> None:
    if sys.stderr.isatty():
        print(f"\r\033[K{text}", end="", file=sys.stderr, flush=True)
    elif text:  # a log: each line with the seconds since the start
        print(f"{time.perf_counter() - _STARTED:7.1f} s  {text}", file=sys.stderr, flush=True)


def run(
    cases,
    dtypes,
    rounds,
    budget_s,
    *,
    methods=True,
    settle_s=SETTLE_S,
    instances=INSTANCES,
    save=None,
    picked=None,
    without=(),
) -> tuple[list[dict], list[str]]:
    """Times every cell; save(rows, skipped), when given, is called after each cell, so that a
    run cut short keeps the cells it finished. picked: the numbers (from 1) of the cases to time,
    None for all; the others' problems are drawn all the same, so that each case gets the same
    numbers as in a whole run with the same dtypes. without: names of systems to leave out.
    instances: how many programs each system's cell is timed on (each from its own copy of the
    problem, all of them every round)."""
    systems, skipped = available(methods)
    unknown = (set(without) - {s.name for s in systems}) | (set(without) & {BASELINE, "jaxlsq"})
    if unknown:
        raise SystemExit(
            f"python3 -m benchmarks: --without {', '.join(sorted(unknown))}: not a system that "
            f"can be left out; these can: {', '.join(s.name for s in systems[1:] if s.name != BASELINE)}"
        )
    systems = [s for s in systems if s.name not in without]
    skipped += [f"{name}: left out (--without)" for name in without]
    pool_of = {system.name: system.pool for system in systems}
    rng = np.random.default_rng(0)  # the problems: the same whatever systems are installed
    order = np.random.default_rng(1)  # the order of the calls
    rows = []
    cells = [
        (number, c, d)
        for number, c in enumerate(cases, 1)
        for d in dtypes
        if not c.only or np.dtype(d).name in c.only
    ]
    for i, (number, case, dtype) in enumerate(cells, 1):
        a, b = problem(case, dtype, rng)
        if picked is not None and number not in picked:
            continue
        x_ref, x_refined = reference(a, b)
        calls = {}
        for system in systems:
            calls[system.name, "primal"] = system.make_primal
            if system.make_grad is not None:
                calls[system.name, "value_and_grad"] = system.make_grad
        accuracy = {}
        for (name, mode), make in list(calls.items()):  # compile, warm up, record the answer
            progress(
                f"[{i}/{len(cells)}] {case.label()} {np.dtype(dtype).name}: warming up {name} {mode}"
            )
            try:
                fs = calls[name, mode] = [make(a, b)]
                out = fs[0]()
                jax.block_until_ready(out)
                for _ in range(instances - 1):  # the others, warmed up (their answers are the same)
                    fs.append(make(a.copy(), b.copy()))
                    jax.block_until_ready(fs[-1]())
            except Exception as err:  # a peer that cannot take this case: say so, go on
                if name.startswith("jaxlsq"):  # but jaxlsq must take every case
                    raise
                del calls[name, mode]
                skipped.append(
                    f"{name} {mode} on {case.label()} {np.dtype(dtype).name}: {type(err).__name__}: {str(err)[:120]}"
                )
                continue
            if mode == "primal":
                accuracy[name] = relative_error(out, x_ref), relative_error(out, x_refined)
        times = {(key, k): [] for key in calls for k in range(instances)}
        faulted = {key: [] for key in calls}
        start = time.perf_counter()
        by_pool = {}
        for key in calls:
            by_pool.setdefault(pool_of[key[0]], []).append(key)
        pools = list(by_pool.values())
        for r in range(rounds):
            progress(
                f"[{i}/{len(cells)}] {case.label()} {np.dtype(dtype).name}: round {r + 1}/{rounds}"
            )
            for p in order.permutation(len(pools)):  # interleaved, in a new order every round
                keys = [pools[p][j] for j in order.permutation(len(pools[p]))]
                settle(calls[keys[0]][0], settle_s)
                for key in keys:
                    for k in order.permutation(instances) if instances > 1 else [0]:
                        seconds, count = timed(calls[key][k])
                        times[key, k].append(seconds)
                        faulted[key].append(count)
            if time.perf_counter() - start > budget_s and r >= 2:
                break
        pooled = {key: [t for k in range(instances) for t in times[key, k]] for key in calls}
        medians = {key: float(np.median(t)) for key, t in pooled.items()}
        for (name, mode), med in medians.items():
            base = medians.get((BASELINE, mode))
            rows.append(
                {
                    "case": case.name,
                    "shape": case.label(),
                    "dtype": np.dtype(dtype).name,
                    "system": name,
                    "mode": mode,
                    "median_s": med,
                    "rounds": len(times[(name, mode), 0]),
                    "instances": instances,
                    # each program's own median: how far apart the compilations landed
                    "instance_medians_s": [
                        float(np.median(times[(name, mode), k])) for k in range(instances)
                    ],
                    "ratio_to_jnp": med / base if base else None,
                    "max_rel_error": accuracy[name][0] if mode == "primal" else None,
                    "max_rel_error_refined": accuracy[name][1] if mode == "primal" else None,
                    "page_faults": _median_count(faulted[name, mode]),
                }
            )
        if save is not None:
            save(rows, skipped)
    progress("")
    return rows, skipped


def _median_count(counts: list[int | None]) -> float | None:
    return None if None in counts else float(np.median(counts))


def markdown(rows: list[dict]) -> str:
    lines = [
        "| case | shape | dtype | system | primal ms | ratio | value_and_grad ms | ratio | max rel. error | vs refined | page faults, primal / vag |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    index = {(r["shape"], r["dtype"], r["system"], r["mode"]): r for r in rows}
    seen = []
    for r in rows:
        key = (r["case"], r["shape"], r["dtype"], r["system"])
        if key in seen:
            continue
        seen.append(key)
        p = index.get((r["shape"], r["dtype"], r["system"], "primal"))
        if p is None:
            continue
        g = index.get((r["shape"], r["dtype"], r["system"], "value_and_grad"))
        grad_ms = f"{1e3 * g['median_s']:.2f}" if g else "-"
        lines.append(
            f"| {r['case']} | {r['shape']} | {r['dtype']} | {r['system']} | {1e3 * p['median_s']:.2f} | "
            f"{_ratio(p)} | {grad_ms} | {_ratio(g)} | {p['max_rel_error']:.1e} | {p['max_rel_error_refined']:.1e} | {_count(p)} / {_count(g)} |"
        )
    return "\n".join(lines)


def _count(row: dict | None) -> str:
    return "-" if row is None or row.get("page_faults") is None else f"{row['page_faults']:.0f}"


def _ratio(row: dict | None) -> str:
    if not row or not row["ratio_to_jnp"]:
        return "-"
    return figure(row["ratio_to_jnp"])  # GPU batches: 1e-4


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cells = sorted(
        {(r["shape"], r["dtype"]) for r in rows},
        key=lambda c: [r["shape"] for r in rows].index(c[0]),
    )
    systems = [s for s in dict.fromkeys(r["system"] for r in rows) if s != BASELINE]
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.45 * len(cells) + 2), sharey=True)
    for ax, mode in zip(axes, ["primal", "value_and_grad"]):
        width = 0.8 / max(len(systems), 1)
        for j, system in enumerate(systems):
            ys, vals = [], []
            for i, cell in enumerate(cells):
                match = [
                    r
                    for r in rows
                    if (r["shape"], r["dtype"]) == cell
                    and r["system"] == system
                    and r["mode"] == mode
                ]
                if match and match[0]["ratio_to_jnp"]:
                    ys.append(i + j * width)
                    vals.append(match[0]["ratio_to_jnp"])
            ax.barh(ys, vals, height=width, label=system, color=f"C{j % 10}")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(f"{mode}: time / jnp.linalg.lstsq (lower is faster)")
        ax.set_yticks([i + 0.4 - width / 2 for i in range(len(cells))])
        ax.set_yticklabels([f"{s} {d}" for s, d in cells])
    axes[0].legend(fontsize=8)  # one colour per system in both panels
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python3 -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small cases (200x50 in float32, 50x400 in float64, 500 64x8 problems in both), "
        "few rounds, one program per system, no qr/cholesky methods (under a minute)",
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="timed rounds per cell (default 9, quick 3)"
    )
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--heap",
        action="store_true",
        help="keep freed memory in glibc's heap: times without the page faults of buffers "
        "mapped afresh on each call",
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=None,
        help=f"programs timed per system and cell, each compiled afresh from its own copy of "
        f"the problem (default {INSTANCES}, quick 1)",
    )
    parser.add_argument(
        "--budget", type=float, default=30.0, help="seconds of timing per cell at most"
    )
    parser.add_argument(
        "--no-methods",
        action="store_true",
        help="leave out jaxlsq's qr and cholesky methods (a third of the compilations)",
    )
    parser.add_argument(
        "--cases",
        default=None,
        help="comma-separated numbers of the cases to time, from 1 in the order of the table "
        "(default all; each keeps the problem it has in a whole run with the same --dtypes)",
    )
    parser.add_argument(
        "--without",
        default="",
        help="comma-separated systems to leave out, e.g. 'lineax(SVD),torch(gelsy)'",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=None,
        help=f"seconds of untimed calls at the start of each pool's turn (default {SETTLE_S}, "
        f"quick {QUICK_SETTLE_S})",
    )
    args = parser.parse_args(argv)
    cases = QUICK if args.quick else FULL
    try:
        picked = None if args.cases is None else {int(c) for c in args.cases.split(",")}
    except ValueError:
        parser.error(f"--cases takes numbers separated by commas, got {args.cases!r}")
    if picked is not None and not picked <= set(range(1, len(cases) + 1)):
        parser.error(f"--cases: numbers from 1 to {len(cases)}, got {args.cases!r}")
    rounds = args.rounds or (3 if args.quick else 9)
    settle_s = (
        args.settle if args.settle is not None else QUICK_SETTLE_S if args.quick else SETTLE_S
    )
    instances = args.instances if args.instances is not None else 1 if args.quick else INSTANCES
    if instances < 1:
        parser.error(f"--instances takes a positive number, got {args.instances}")
    dtypes = [np.dtype(d).type for d in args.dtypes.split(",")]
    allocator = keep_heap() if args.heap else "the default malloc"
    started = time.perf_counter()
    command = "python3 -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)

    def info(skipped: list[str], finished: bool) -> dict:
        import jaxlsq

        return {
            "command": command,
            "machine": _machine(),
            "python": platform.python_version(),
            "allocator": allocator,
            "instances": instances,
            "versions": _versions(),
            "jaxlsq": jaxlsq.__version__,
            "seconds": round(time.perf_counter() - started, 1),
            "finished": finished,  # False: cut short, the cells done so far
            "skipped": skipped,
        }

    def save(rows: list[dict], skipped: list[str], finished: bool = False) -> dict:
        """Writes results.json whole or not at all (a run stopped mid-write keeps the last one);
        returns its info."""
        record = {"info": info(skipped, finished), "rows": rows}
        part = args.out / "results.json.part"
        part.write_text(json.dumps(record, indent=1))
        os.replace(part, args.out / "results.json")
        return record["info"]

    rows, skipped = run(
        cases,
        dtypes,
        rounds,
        args.budget,
        methods=not (args.quick or args.no_methods),
        settle_s=settle_s,
        instances=instances,
        save=save,
        picked=picked,
        without=list(dict.fromkeys(n.strip() for n in args.without.split(",") if n.strip())),
    )
    final = save(rows, skipped, finished=True)
    for line in skipped:
        print(line)
    print(markdown(rows))
    print()
    print(json.dumps(final, indent=1))
    if plot(rows, args.out / "ratios.png"):
        print(f"wrote {args.out / 'results.json'} and {args.out / 'ratios.png'}")
    else:
        print(f"wrote {args.out / 'results.json'} (no plot: matplotlib not installed)")


def _machine() -> str:
    """The processor, and the device JAX runs on (a GPU's name where there is one)."""
    device = jax.devices()[0]
    return (
        f"{platform.machine()}, {platform.processor() or '?'}, {os.cpu_count()} CPU cores, "
        f"{device.platform}: {device.device_kind}, {len(jax.devices())} JAX device(s)"
    )


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    names = ["jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "numpy", "scipy"]
    for name in [*names, "lineax", "torch"]:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


if __name__ == "__main__":
    main()
