"""``python -m benchmarks.npy_larger_than_memory``: W1 on a .npy file larger than memory.

Writes W1-shaped data (784 float32 features, 10 classes) to ``--dir`` as .npy files of
``--ratio`` times the memory budget, then trains W1 (2 workers, grad_avg) with
``dataset=npy`` and, interleaved round by round, on the usual in-memory synthetic set,
and reports both samples/s, their ratio and the I/O rates (writing the file, one cold
sequential read, and what the training runs read from disk).

I/O: the write rate counts the ``write`` calls and ``fsync``; the cold sequential read
is one pass over the file with its cache dropped; during training the device's read
counter (/proc/diskstats, machine-wide) gives an upper bound of what a run read.

"Once the page cache is warm for the part that fits": right before each npy round the
part of the file that fits (available memory less ``--reserve-gb``) is read, and the
share of the file in the page cache is measured (``mincore``) before and after the
run. Some VMs page out idle file cache on their own (DAMON ``pageout``, listed in the
output and the JSON): there a cache read minutes earlier is gone, hence the re-warming.

The memory budget is the machine's RAM, or, with ``--memory-cap-gb``, a cgroup (v1
memory controller) created under this process's own cgroup whose limit covers every
page the training processes charge, their page cache included: a file of 1.5x the cap
then cannot fit in the cache it may use. Without a cap, a file of 1.5x RAM needs that
much free disk and time to write. This is a benchmark, not a test: it prints what it
measures as it goes, says which budget it used, and records the machine (CPU, BLAS,
versions, commit, load average at the start and the end).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.child_env import ROOT, child_env
from benchmarks.machine import describe, summary

FEATURES, CLASSES, N_TEST = 784, 10, 2048
_CHUNK_ROWS = 32768
_MINCORE_PIECE = 1 << 30  # a multiple of the page size


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _meminfo_bytes(key: str) -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/meminfo")


def cold_page_reclaim() -> list[dict]:
    """The DAMON schemes running on this machine (``/sys/kernel/mm/damon``): a VM whose
    host takes idle memory back can page out file cache that nobody touched for a
    minute, whatever the free memory. On such a machine the cache is only warm for a
    while after it was read, so each npy round re-warms it right before it runs."""
    schemes = []
    for scheme in sorted(
        Path("/sys/kernel/mm/damon/admin/kdamonds").glob("*/contexts/*/schemes/*")
    ):
        try:
            context = scheme.parents[1]
            kdamond = context.parents[1]
            aggr_us = int((context / "monitoring_attrs/intervals/aggr_us").read_text())
            age_min = int((scheme / "access_pattern/age/min").read_text())
            quota = int((scheme / "quotas/bytes").read_text())
            reset_ms = int((scheme / "quotas/reset_interval_ms").read_text())
            schemes.append(
                {
                    "state": (kdamond / "state").read_text().strip(),
                    "action": (scheme / "action").read_text().strip(),
                    "idle_seconds_before_acting": age_min * aggr_us / 1e6,
                    "bytes_per_second_at_most": quota * 1000 / reset_ms if reset_ms else None,
                }
            )
        except (OSError, ValueError):
            continue
    return schemes


def _drop_cache(path: Path) -> None:
    """Evict this file's pages from the page cache (this file only)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_files(directory: Path, n_rows: int, seed: int = 0) -> dict:
    """W1-shaped Gaussian-mixture data written in chunks (never whole in memory).

    The write rate counts only the ``write`` calls and the final ``fsync`` (generating
    the rows is not I/O); an existing set of files of the right size is reused."""
    paths = {k: directory / f"{k}.npy" for k in ("x_train", "y_train", "x_test", "y_test")}
    size = n_rows * FEATURES * 4
    if all(p.exists() for p in paths.values()):
        x = np.load(paths["x_train"], mmap_mode="r")
        if x.shape == (n_rows, FEATURES):
            say("  reusing the files already there")
            return {"paths": paths, "bytes": size, "write_gb_per_s": None}
    rng = np.random.default_rng(seed)
    centres = (rng.standard_normal((CLASSES, FEATURES)) * 3 / np.sqrt(FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, n_rows).astype(np.int32)
    io_seconds = 0.0
    with open(paths["x_train"], "wb") as fh:
        header = {"descr": "<f4", "fortran_order": False, "shape": (n_rows, FEATURES)}
        np.lib.format.write_array_header_1_0(fh, header)
        for lo in range(0, n_rows, _CHUNK_ROWS):
            hi = min(lo + _CHUNK_ROWS, n_rows)
            chunk = rng.standard_normal((hi - lo, FEATURES), dtype=np.float32)
            chunk += centres[y[lo:hi]]
            start = time.perf_counter()
            fh.write(chunk.data)
            io_seconds += time.perf_counter() - start
            if lo // _CHUNK_ROWS % 16 == 0:
                say(f"  written {hi * FEATURES * 4 / 2**30:.1f} GB")
        start = time.perf_counter()
        fh.flush()
        os.fsync(fh.fileno())
        io_seconds += time.perf_counter() - start
    _drop_cache(paths["x_train"])
    np.save(paths["y_train"], y)
    yt = rng.integers(0, CLASSES, N_TEST).astype(np.int32)
    xt = rng.standard_normal((N_TEST, FEATURES), dtype=np.float32) + centres[yt]
    np.save(paths["x_test"], xt)
    np.save(paths["y_test"], yt)
    return {"paths": paths, "bytes": size, "write_gb_per_s": size / 2**30 / io_seconds}


def read_sequentially(path: Path, n_bytes: int, cgroup: Path | None) -> float:
    """Read the first ``n_bytes`` of the file in 64 MB pieces (in ``cgroup``, so the
    page cache it fills is charged there); GB/s."""
    code = (
        "import sys, time\n"
        "t = time.perf_counter(); n = 0; left = int(sys.argv[2])\n"
        "with open(sys.argv[1], 'rb', buffering=0) as f:\n"
        "    while left > 0 and (b := f.read(min(64 << 20, left))):\n"
        "        n += len(b); left -= len(b)\n"
        "print(n / 2**30 / (time.perf_counter() - t))\n"
    )
    out = _run([sys.executable, "-c", code, str(path), str(n_bytes)], cgroup)
    return float(out.strip().splitlines()[-1])


def cold_read_rate(path: Path, cgroup: Path | None) -> float:
    """GB/s of one sequential read of the file from disk (its cache dropped first)."""
    _drop_cache(path)
    return read_sequentially(path, os.path.getsize(path), cgroup)


def resident_bytes(path: Path) -> int:
    """How much of the file is in the page cache now (``mincore`` on a read-only map of
    it, 1 GiB at a time; Python has no ``mincore``, hence ctypes)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    page = mmap.PAGESIZE
    size = os.path.getsize(path)
    resident = 0
    for lo in range(0, size, _MINCORE_PIECE):
        length = min(_MINCORE_PIECE, size - lo)
        view = np.memmap(path, dtype=np.uint8, mode="r", offset=lo, shape=(length,))
        vec = ctypes.create_string_buffer((length + page - 1) // page)
        if libc.mincore(view.ctypes.data, length, vec) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        resident += int(np.count_nonzero(np.frombuffer(vec.raw, np.uint8) & 1)) * page
        del view
    return min(resident, size)


def _make_cgroup(cap_bytes: int) -> Path:
    """A memory cgroup (v1) under this process's own, limited to ``cap_bytes``."""
    with open("/proc/self/cgroup") as fh:
        mine = next(line.split(":", 2)[2].strip() for line in fh if ":memory:" in line)
    group = Path("/sys/fs/cgroup/memory") / mine.lstrip("/") / f"fastdist-npy-{os.getpid()}"
    group.mkdir()
    (group / "memory.limit_in_bytes").write_text(str(cap_bytes))
    return group


def _run(argv: list[str], cgroup: Path | None, env: dict | None = None) -> str:
    """Run ``argv`` (inside ``cgroup``: the child moves itself in before exec)."""
    if cgroup is not None:
        argv = ["sh", "-c", f'echo $$ > {cgroup / "cgroup.procs"} && exec "$@"', "sh", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[-3:]} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout


def warm_the_cache(
    path: Path, file_bytes: int, budget: int, cgroup: Path | None, reserve_gb: float
) -> dict:
    """Read the part of the file that fits in the page cache, right before a run.

    "Fits": what the cache may hold now (``MemAvailable``, or under a cap the cap) less
    ``reserve_gb`` for the training processes themselves. Uniformly shuffled rows then
    hit the cache with a probability of about (that part) / (the file)."""
    room = budget if cgroup is not None else _meminfo_bytes("MemAvailable")
    part = max(0, min(file_bytes, room - int(reserve_gb * 2**30)))
    say(f"  warming the page cache: the first {part / 2**30:.1f} GiB of the file")
    rate = read_sequentially(path, part, cgroup) if part else 0.0
    resident = resident_bytes(path) / file_bytes
    say(f"  {rate:.2f} GB/s; {100 * resident:.0f}% of the file is in the page cache")
    return {"warmed_bytes": part, "warm_read_gb_per_s": rate, "resident_before": resident}


def train(steps: int, files: dict | None, cgroup: Path | None, seed: int = 0) -> dict:
    env = child_env()
    with tempfile.TemporaryDirectory() as tmp:
        # W1's settings, spelled out: experiment=w1 also sets the synthetic dataset's
        # keys, which dataset=npy does not have. Its in-memory set (16384 rows) is the
        # reference; the .npy files replace it.
        argv = [sys.executable, "-m", "fastdist", "workers=2", "combiner=grad_avg"]
        argv += ["model.hidden=[1024,1024]", "batch_size=256", "optimizer.lr=0.01"]
        argv += ["optimizer.momentum=0.9"]
        if files is not None:  # validated once already: skip the finiteness pass
            argv += ["dataset=npy", "dataset.check_finite=false"]
            argv += [f"dataset.{k}={p}" for k, p in files["paths"].items()]
        else:
            argv += ["dataset=synthetic", "dataset.n_train=16384", "dataset.n_test=2048"]
            argv += [f"dataset.n_features={FEATURES}", f"dataset.n_classes={CLASSES}"]
        # Each round its own seed (both kinds): another shuffle, so an npy run reads
        # rows the previous rounds did not bring into the page cache.
        argv += [f"steps={steps}", f"seed={seed}", "diagnostics=false", f"hydra.run.dir={tmp}"]
        probe = Path(tmp) if files is None else files["paths"]["x_train"]
        io_before, start = _disk_read_bytes(probe), time.perf_counter()
        _run(argv, cgroup, env)
        io_after, seconds = _disk_read_bytes(probe), time.perf_counter() - start
        metrics = json.loads((Path(tmp) / "metrics.json").read_text())
    out = {k: metrics[k] for k in ("samples_per_second", "train_seconds")}
    if io_before is not None and io_after is not None:
        out["disk_read_gb"] = (io_after - io_before) / 2**30
        out["disk_read_gb_per_s"] = out["disk_read_gb"] / seconds
    return out


def _disk_read_bytes(path: Path) -> int | None:
    """Bytes read so far from the block device holding ``path`` (/proc/diskstats: every
    process on the machine, so an upper bound for what a run read)."""
    dev = os.stat(path).st_dev
    major, minor = os.major(dev), os.minor(dev)
    try:
        with open("/proc/diskstats") as fh:
            for line in fh:
                f = line.split()
                if int(f[0]) == major and int(f[1]) == minor:
                    return int(f[5]) * 512
    except (OSError, ValueError, IndexError):
        pass
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", default=None, help="where to write the files (default: a temp dir)"
    )
    parser.add_argument("--memory-cap-gb", type=float, help="cgroup cap (default: no cap, RAM)")
    parser.add_argument("--ratio", type=float, default=1.5, help="file size / memory budget")
    parser.add_argument("--steps", type=int, default=120, help="timed steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    parser.add_argument(
        "--no-warm",
        dest="warm",
        action="store_false",
        help="do not read the part of the file that fits into the cache before npy runs",
    )
    parser.add_argument(
        "--reserve-gb",
        type=float,
        help="memory left free when warming (default: 3, or 30%% of a cap)",
    )
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args(argv)

    machine = describe()
    say(f"machine: {summary(machine)}")
    budget = int(args.memory_cap_gb * 2**30) if args.memory_cap_gb else _meminfo_bytes("MemTotal")
    n_rows = int(args.ratio * budget / (FEATURES * 4))
    cgroup = _make_cgroup(budget) if args.memory_cap_gb else None
    if args.reserve_gb is None:
        # Room for the training processes and for the rows a run reads from the disk,
        # so they need no reclaim while it runs. Measured (35.3 GiB file, 23.5 GiB RAM):
        # with 1.5 GiB left, per-round npy/memory ratios 0.68-0.88; with 3 GiB,
        # 0.85-0.87 at the same share of the file cached (53-61%).
        args.reserve_gb = min(3.0, 0.3 * budget / 2**30)
    what = f"a cgroup memory cap of {budget / 2**30:.1f} GiB" if cgroup else "the machine's RAM"
    say(
        f"budget: {what}; file: {n_rows:,} rows x {FEATURES} float32 = "
        f"{n_rows * FEATURES * 4 / 2**30:.1f} GiB ({args.ratio}x)"
    )
    directory = Path(args.dir or tempfile.mkdtemp(prefix="fastdist-npy-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        say(f"writing the files to {directory}")
        files = write_files(directory, n_rows)
        if files["write_gb_per_s"] is not None:
            say(f"  write rate (write calls + fsync): {files['write_gb_per_s']:.2f} GB/s")
        say("one cold sequential read of x_train (cache dropped first)")
        read_rate = cold_read_rate(files["paths"]["x_train"], cgroup)
        say(f"  cold sequential read: {read_rate:.2f} GB/s")
        reclaim = cold_page_reclaim()
        for scheme in reclaim:
            say(
                f"  this machine runs DAMON '{scheme['action']}' ({scheme['state']}) on memory "
                f"idle for {scheme['idle_seconds_before_acting']:.0f} s, at most "
                f"{(scheme['bytes_per_second_at_most'] or 0) / 2**20:.0f} MB/s"
            )
        x_path = files["paths"]["x_train"]
        samples: dict[str, list[dict]] = {"npy": [], "memory": []}
        for r in range(args.rounds):
            for kind in ("npy", "memory"):
                say(f"round {r + 1}/{args.rounds}: W1 2 workers, {kind}, {args.steps} steps")
                warm = {}
                if kind == "npy" and args.warm:
                    warm = warm_the_cache(x_path, files["bytes"], budget, cgroup, args.reserve_gb)
                result = train(args.steps, files if kind == "npy" else None, cgroup, seed=r)
                if kind == "npy":
                    result.update(warm, resident_after=resident_bytes(x_path) / files["bytes"])
                samples[kind].append(result)
                extra = ""
                if "disk_read_gb" in result:
                    extra = (
                        f"; the disk (machine-wide) read {result['disk_read_gb']:.2f} GB, "
                        f"{result['disk_read_gb_per_s']:.3f} GB/s over the run"
                    )
                if "resident_after" in result:
                    extra += f"; {100 * result['resident_after']:.0f}% cached after"
                say(f"  {result['samples_per_second']:,.0f} samples/s{extra}")
        med = {k: statistics.median(s["samples_per_second"] for s in v) for k, v in samples.items()}
        results = {
            "command": " ".join(
                ["python -m benchmarks.npy_larger_than_memory", *(argv or sys.argv[1:])]
            ),
            "machine": machine,
            "load_average_at_end": list(os.getloadavg()),
            "budget": what,
            "budget_bytes": budget,
            "file_bytes": files["bytes"],
            "write_gb_per_s": files["write_gb_per_s"],
            "cold_sequential_read_gb_per_s": read_rate,
            "warmed_before_each_npy_round": args.warm,
            "cold_page_reclaim": reclaim,
            "steps": args.steps,
            "rounds": samples,
            "median_samples_per_second": med,
            "npy_over_memory": med["npy"] / med["memory"],
        }
        print(json.dumps(results, indent=2))
        print(
            f"W1, 2 workers, file {files['bytes'] / 2**30:.1f} GiB = {args.ratio}x {what}: "
            f"{med['npy']:,.0f} samples/s from the memory-mapped file vs {med['memory']:,.0f} "
            f"in memory = {results['npy_over_memory']:.2f}x (target >= 0.8); disk write "
            f"{files['write_gb_per_s'] or float('nan'):.2f} GB/s, cold sequential read "
            f"{read_rate:.2f} GB/s"
        )
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if not args.keep:
            for path in directory.glob("*.npy"):
                path.unlink()
            if args.dir is None:
                directory.rmdir()
        if cgroup is not None:
            for _ in range(50):  # the last processes may still be leaving the group
                try:
                    cgroup.rmdir()
                    break
                except OSError:
                    time.sleep(0.2)


if __name__ == "__main__":
    main()
