"""Artifact store benchmark: a directory passed through a 3-step chain, against plain copies.

    python benchmarks/bench_artifacts.py [--quick] [--size 1GiB] [--files 1000]
                                         [--s3-size 256MiB] [--repeat 3] [--no-s3]

The chain, emulated at the store level (what a worker does around each OP):

    step1  put(dir)                                   commit its output
    step2  get(ref1) -> work dir; put(that dir)       an OP that passes its input through
    step3  get(ref2) -> work dir                      the consumer

(a) local store vs one ``cp -r`` of the same directory, measured in the same run (target <= 1.2x);
(b) a real S3-compatible server (moto, in its own process, on loopback) vs raw s3fs
    ``put`` + ``get`` of the same data (target <= 1.5x).

Every chain run starts from an empty store, an empty download cache and an empty digest cache,
so step1 hashes everything. Times are the best of ``--repeat`` runs. Also measured: hashing the
directory on 1 thread vs all cores (does threading help?), and what the chain costs beyond that
hashing: every byte must be hashed once, so that remainder is all a store can cut. Not a test:
nothing asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))  # run from a checkout without installing

from dflow_async._store import ArtifactStore  # noqa: E402
from dflow_async._store_hash import DIGESTS, hash_file, parallel_map  # noqa: E402

MiB = 1 << 20
console = Console()


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": MiB, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    return int(float(t[:-1]) * units[t[-1]]) if t[-1] in units else int(t)


def human(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / MiB:.0f} MiB"


def make_tree(root: Path, total: int, files: int) -> None:
    """``files`` random files totalling ``total`` bytes, spread over 10 subdirectories."""
    each = total // files
    for i in range(files):
        d = root / f"part{i % 10:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}.bin").write_bytes(os.urandom(each))


def read_all(root: Path) -> None:
    """Warm the page cache, so every contender reads from memory."""
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                while fh.read(8 * MiB):
                    pass


def best_of(repeat: int, *contenders: Callable[[], dict[str, float]]) -> list[dict[str, float]]:
    """Each contender's best run. Runs alternate (a, b, a, b...) so that load from other
    processes hits both alike, and the disk is synced before each run so that nobody pays for
    the previous run's write-back."""
    runs: list[list[dict[str, float]]] = [[] for _ in contenders]
    for _ in range(repeat):
        for i, fn in enumerate(contenders):
            os.sync()
            runs[i].append(fn())
    return [min(r, key=lambda x: x["total"]) for r in runs]


def timed(out: dict[str, float], label: str, fn: Callable[[], Any]) -> Any:
    t = time.perf_counter()
    result = fn()
    out[label] = time.perf_counter() - t
    return result


def chain(store: ArtifactStore, src: Path, work: Path) -> dict[str, float]:
    """The 3-step chain; returns seconds per stage and the total."""
    DIGESTS.clear()  # every run hashes from scratch
    t: dict[str, float] = {}
    start = time.perf_counter()
    ref1 = timed(t, "step1 put", lambda: store.put(src, producer="step1"))
    got = timed(t, "step2 get", lambda: store.get(ref1, work / "step2"))
    ref2 = timed(t, "step2 put", lambda: store.put(got, producer="step2"))
    timed(t, "step3 get", lambda: store.get(ref2, work / "step3"))
    t["total"] = time.perf_counter() - start
    assert ref2.digest == ref1.digest, "a pass-through must keep its digest"
    return t


def fresh(path: Path) -> Path:
    if path.exists():
        for p in path.rglob("*"):  # objects are read-only; directories are not
            with contextlib.suppress(OSError):
                if p.is_dir() and not p.is_symlink():
                    p.chmod(0o700)
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# -- (a) local ----------------------------------------------------------------------------


def bench_local(base: Path, src: Path, repeat: int) -> list[tuple[str, float, str]]:
    def cp_r() -> dict[str, float]:
        dst = fresh(base / "cp") / src.name
        t = time.perf_counter()
        subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
        return {"total": time.perf_counter() - t}

    def run() -> dict[str, float]:
        store = ArtifactStore(str(fresh(base / "store")))
        return chain(store, src, fresh(base / "work"))

    cp_best, ours = best_of(repeat, cp_r, run)
    cp = cp_best["total"]
    rows = [("cp -r (baseline)", cp, "")]
    rows += [(f"  {k}", v, "") for k, v in ours.items() if k != "total"]
    rows.append(("store chain (total)", ours["total"], f"{ours['total'] / cp:.2f}x  (≤ 1.2x)"))
    return rows


def bench_hash_threads(src: Path, repeat: int) -> list[tuple[str, float, str]]:
    files = sorted(p for p in src.rglob("*") if p.is_file())
    rows = []
    base = 0.0
    for n in sorted({1, 2, os.cpu_count() or 1}):
        t = min(_time(lambda n=n: parallel_map(hash_file, files, n)) for _ in range(repeat))
        base = base or t
        rows.append((f"sha256 of the tree, {n} thread(s)", t, f"{base / t:.2f}x speed-up"))
    return rows


def _time(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# -- (b) S3 through moto ----------------------------------------------------------------------


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto in its own process (so the server does not share our GIL), on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def bench_s3(base: Path, src: Path, repeat: int) -> list[tuple[str, float, str]]:
    import s3fs

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(k, "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    with moto_server() as endpoint:
        opts = {"client_kwargs": {"endpoint_url": endpoint}, "key": "testing", "secret": "testing"}
        fs = s3fs.S3FileSystem(**opts)
        fs.mkdir("bench")

        def raw() -> dict[str, float]:
            prefix = f"bench/raw-{uuid.uuid4().hex[:8]}"
            dst = fresh(base / "raw")
            t: dict[str, float] = {}
            start = time.perf_counter()
            timed(t, "put", lambda: fs.put(str(src), f"{prefix}/{src.name}", recursive=True))
            timed(t, "get", lambda: fs.get(f"{prefix}/{src.name}", str(dst), recursive=True))
            t["total"] = time.perf_counter() - start
            return t

        def run() -> dict[str, float]:
            store = ArtifactStore(
                f"s3://bench/chain-{uuid.uuid4().hex[:8]}", opts, cache_dir=fresh(base / "cache")
            )
            return chain(store, src, fresh(base / "work"))

        theirs, ours = best_of(repeat, raw, run)
    rows = [("s3fs put + get (baseline)", theirs["total"], "")]
    rows += [(f"  {k}", v, "") for k, v in theirs.items() if k != "total"]
    rows += [(f"  {k}", v, "") for k, v in ours.items() if k != "total"]
    ratio = ours["total"] / theirs["total"]
    rows.append(("store chain (total)", ours["total"], f"{ratio:.2f}x  (≤ 1.5x)"))
    return rows


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", default="1GiB", help="local directory size (default 1GiB)")
    ap.add_argument("--files", type=int, default=1000, help="number of files (default 1000)")
    ap.add_argument("--s3-size", default="256MiB", help="S3 directory size (default 256MiB)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    ap.add_argument("--no-s3", action="store_true", help="skip the S3 part")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 MiB / 16 MiB, 100 files")
    ap.add_argument("--workdir", default=None, help="where to put the data (default: a temp dir)")
    args = ap.parse_args()
    size, s3_size, files = parse_size(args.size), parse_size(args.s3_size), args.files
    if args.quick:
        size, s3_size, files, args.repeat = 64 * MiB, 16 * MiB, 100, 1

    with tempfile.TemporaryDirectory(prefix="bench-artifacts-", dir=args.workdir) as tmp:
        base = Path(tmp)
        table = Table(title=f"artifact store, {os.cpu_count()} CPU(s), best of {args.repeat}")
        for col in ("case", "seconds", "ratio"):
            table.add_column(col, justify="right" if col == "seconds" else "left")

        src = base / "data" / "tree"
        console.print(f"generating {human(size)} in {files} files ...")
        make_tree(src, size, files)
        read_all(src)
        table.add_section()
        table.add_row(f"[bold](a) local, {human(size)} / {files} files[/]", "", "")
        hashing = bench_hash_threads(src, args.repeat)
        local = bench_local(base, src, args.repeat)
        beyond = local[-1][1] - hashing[-1][1]  # the chain's total, sha256 on all cores
        local.append(("  beyond hashing", beyond, "chain - sha256 on all cores"))
        for row in hashing + local:
            table.add_row(row[0], f"{row[1]:.3f}", row[2])
        fresh(base / "data")

        missing = [m for m in ("s3fs", "moto") if importlib.util.find_spec(m) is None]
        if missing and not args.no_s3:
            console.print(f"[yellow]skipping S3: {', '.join(missing)} not installed[/]")
        if not args.no_s3 and not missing:
            s3src = base / "s3data" / "tree"
            make_tree(s3src, s3_size, files)
            read_all(s3src)
            table.add_section()
            table.add_row(f"[bold](b) S3 (moto), {human(s3_size)} / {files} files[/]", "", "")
            for row in bench_s3(base, s3src, args.repeat):
                table.add_row(row[0], f"{row[1]:.3f}", row[2])
        fresh(base)
        console.print(table)


if __name__ == "__main__":
    main()
