#!/usr/bin/env python3
"""The sections of `gpu-check.md` (scripts/gpu-check.sh), from the raw results as they stand: every input may be
missing, empty, cut off mid-line or hold failed rows — each turns into a line that says so, never an exception.

    gpu_report.py ops SELFCHECK.jsonl          # ops on the device against their CPU kernels
    gpu_report.py parity SELFCHECK.jsonl       # backbone parity with PyTorch
    gpu_report.py train NAME RUN_DIR|-         # one training check: loss falls, report written, rate, wait, peak
    gpu_report.py bench OURS.jsonl TORCH_SDPA.jsonl TORCH_EAGER.jsonl   # ours beside PyTorch eager, ratios

Exit status: 0, or 1 when what the section checks failed (an op or a parity check, a training check); benchmark
rows never fail the section (their failures are shown).
"""

from __future__ import annotations

import json
import math
import os
import sys


def rows(path, section=None):
    """The JSON objects of a JSON-lines file (a line that does not parse — a run killed mid-write — is skipped)."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if section is None or row.get("section") == section:
                    out.append(row)
    except OSError:
        pass
    return out


def number(value, fmt):
    return fmt.format(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def gib(value):
    return f"{value / 2**30:.2f} GiB" if isinstance(value, (int, float)) and value > 0 else "?"


def cell(text):
    return str(text).replace("|", "/").replace("\n", " ")[:160]


def ops(path):
    found = rows(path, "ops")
    print("| op | body | max rel. error | tolerance | outcome |")
    print("|---|---|---|---|---|")
    failed = 0
    for r in found:
        if "op" not in r:
            failed += 1
            print(f"| (all) | | | | failed: {cell(r.get('error', '?'))} |")
            continue
        ok = r.get("passed") is True
        failed += not ok
        err = number(r.get("max_rel_error"), "{:.2e}") or "?"
        tol = number(r.get("tolerance"), "{:.0e}") or "?"
        print(f"| {r['op']} | {r.get('body', '?')} | {err} | {tol} | {'ok' if ok else 'FAILED: ' + cell(r.get('detail', ''))} |")
    if not found:
        print("| – | | | | no results (the step did not run or was stopped before its first op) |")
        return 1
    return 1 if failed else 0


def parity(path):
    found = rows(path, "parity")
    print("| backbone | tensors | worst rel. error | outcome |")
    print("|---|---|---|---|")
    failed = 0
    for r in found:
        ok = r.get("passed") is True
        failed += not ok
        worst = number(r.get("worst_relative_error"), "{:.2e}") or "?"
        why = r.get("error") or r.get("failures") or ""
        print(f"| {r.get('backbone', '?')} | {r.get('tensors', '?')} | {worst} | {'ok' if ok else 'FAILED: ' + cell(why)} |")
    if not found:
        print("| – | | | no results (the step did not run or was stopped before its first backbone) |")
        return 1
    return 1 if failed else 0


def train(name, run):
    lines = rows(os.path.join(run, "metrics.jsonl")) if run != "-" else []
    if not lines:
        print(f"| {name} | FAILED: no epoch finished | | | |")
        return 1
    first, last = lines[0].get("train_loss"), lines[-1].get("train_loss")
    report = all(os.path.isfile(os.path.join(run, f)) for f in ("report-valid.txt", "summary.json"))
    falls = isinstance(first, (int, float)) and isinstance(last, (int, float)) and last < first
    busy = sum((l.get("data_wait_seconds") or 0) + (l.get("compute_seconds") or 0) for l in lines)
    wait = sum(l.get("data_wait_seconds") or 0 for l in lines) / busy if busy > 0 else float("nan")
    peak = max((l.get("peak_memory_bytes") or 0) for l in lines)
    rate = sum(l.get("train_samples_per_s") or 0 for l in lines) / len(lines)
    ok = falls and report
    loss = f"loss {first:.4f} → {last:.4f}" if falls or (isinstance(first, float) and isinstance(last, float)) else "loss ?"
    outcome = f"{'ok' if ok else 'FAILED'}: {loss} over {len(lines)} epochs, report {'written' if report else 'MISSING'}"
    print(f"| {name} | {outcome} | {rate:.1f} | {100 * wait:.1f}% | {gib(peak)} |")
    return 0 if ok else 1


def bench(ours_path, sdpa_path, eager_path):
    ours = rows(ours_path, "bench")
    key = lambda r: (r.get("name"), r.get("precision"))
    sdpa = {key(r): r for r in rows(sdpa_path)}
    eager = {key(r): r for r in rows(eager_path)}
    names = []
    for r in ours + list(sdpa.values()) + list(eager.values()):
        if key(r) not in names:
            names.append(key(r))
    print("| workload | precision | batch | ours s | PyTorch SDPA s | SDPA / ours | PyTorch eager-attn s | eager / ours "
          "| ours peak | PyTorch peak | peak ours / PyTorch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")

    def seconds(r):
        if r is None:
            return None, "not run"
        if r.get("error"):
            return None, f"failed: {cell(r['error'])[:70]}"
        t = r.get("total_s")
        return (t, f"{t:.4f}") if isinstance(t, (int, float)) and math.isfinite(t) and t > 0 else (None, "no timing")

    ours_by_key = {key(r): r for r in ours}
    for k in names:
        o, s, e = ours_by_key.get(k), sdpa.get(k), eager.get(k)
        ot, otext = seconds(o)
        st, stext = seconds(s)
        et, etext = seconds(e)
        ratio = lambda t: f"{t / ot:.2f}x" if t and ot else "–"
        batch = (o or s or e or {}).get("batch", "?")
        op, tp = (o or {}).get("peak_memory_bytes"), (s or {}).get("peak_memory_bytes")
        mem = f"{op / tp:.2f}" if op and tp else "–"
        print(f"| {k[0]} | {k[1]} | {batch} | {otext} | {stext} | {ratio(st)} | {etext} | {ratio(et)} | {gib(op)} "
              f"| {gib(tp)} | {mem} |")
    if not names:
        print("| – | | | not run | not run | – | not run | – | | | |")
    print()
    print("Ratio = PyTorch's seconds / ours (above 1: ours is faster). Peak = the device's high-water mark over the "
          "timed iterations (ours: the CUDA memory pool's used-memory high; PyTorch: max_memory_allocated).")
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    what, args = argv[1], argv[2:]
    try:
        if what == "ops" and len(args) == 1:
            return ops(*args)
        if what == "parity" and len(args) == 1:
            return parity(*args)
        if what == "train" and len(args) == 2:
            return train(*args)
        if what == "bench" and len(args) == 3:
            return bench(*args)
    except Exception as e:  # a section must never be lost to a formatting bug: say what happened
        print(f"(the {what} section could not be formatted: {type(e).__name__}: {e})")
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
