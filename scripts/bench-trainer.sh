#!/usr/bin/env bash
# Trainer benchmark (`make bench`): training samples/s of t-um-glove, a-um-waveform and the baseline's concat
# fusion + head, in erc-train (candle, CPU) and in PyTorch (CPU) on the same input shapes and thread count, and
# the ratio ours / PyTorch (target >= 1.0x).
#
# PyTorch comes from PYTHON (default: .venv/bin/python if it exists, else python3); if it has no torch, the script
# says how to get it and stops. Environment: BENCH_STEPS (default 20; BENCH_HEAD_STEPS for the head alone, default
# 25 times as many), BENCH_THREADS (default: all cores),
# BENCH_REPEATS (default 3): both sides run that many times, alternating, and each reports its best run — on a shared
# machine a run that another process interrupted only ever looks slower, never faster. BENCH_MODELS: a subset of
# t-um-glove,a-um-waveform,baseline-head.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

STEPS=${BENCH_STEPS:-20}
HEAD_STEPS=${BENCH_HEAD_STEPS:-$((STEPS * 25))}
THREADS=${BENCH_THREADS:-$(nproc)}
REPEATS=${BENCH_REPEATS:-3}
MODELS=${BENCH_MODELS:-t-um-glove,a-um-waveform,baseline-head}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "bench-trainer: $PYTHON has no torch; install it (e.g. python3 -m venv .venv && .venv/bin/pip install torch) or set PYTHON" >&2
  exit 1
fi

WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
cargo test --release --workspace --test bench_train -q --no-run 2>/dev/null
echo "bench-trainer: $MODELS, $STEPS steps of batch 64 ($HEAD_STEPS for the head), $THREADS threads, best of $REPEATS alternating runs; $(uptime | sed 's/.*load/load/')"
# MALLOC_ARENA_MAX=1: libtest runs the benchmark on a spawned thread, and glibc gives such a thread an arena of
# 64 MiB heaps that must mmap every larger block (the waveform model's 90 MB gradients) afresh each step, whatever
# `erc_train::heap` asks; the trainer steps on its main thread, whose arena reuses them. One arena makes the
# benchmark's thread allocate as the trainer's main thread does.
for i in $(seq "$REPEATS"); do
  for model in ${MODELS//,/ }; do
    # The head alone takes ~1 ms a step: it gets more steps, so that a run lasts long enough to time.
    steps=$([ "$model" = baseline-head ] && echo "$HEAD_STEPS" || echo "$STEPS")
    MALLOC_ARENA_MAX=1 RAYON_NUM_THREADS=$THREADS BENCH_STEPS=$steps BENCH_MODELS=$model \
      cargo test --release --workspace --test bench_train -q -- --ignored --nocapture 2>/dev/null \
      | grep '^{' >> "$WORK/ours.jsonl"
    "$PYTHON" scripts/bench_train_torch.py --models "$model" --steps "$steps" --threads "$THREADS" >> "$WORK/torch.jsonl"
  done
done

"$PYTHON" - "$WORK/ours.jsonl" "$WORK/torch.jsonl" <<'PY'
import json, sys
def best(path):
    runs = {}
    for r in map(json.loads, open(path)):
        runs.setdefault(r["model"], []).append(r)
    return {m: max(rs, key=lambda r: r["samples_per_s"]) | {"all": [r["samples_per_s"] for r in rs]} for m, rs in runs.items()}
ours, torch = best(sys.argv[1]), best(sys.argv[2])
print(f"{'model':<16} {'erc-train':>12} {'pytorch':>12} {'ratio':>8}   (samples/s, training, CPU, best run)")
for name, r in ours.items():
    t = torch[name]["samples_per_s"]
    print(f"{name:<16} {r['samples_per_s']:>12.1f} {t:>12.1f} {r['samples_per_s'] / t:>7.2f}x"
          f"   runs: ours {', '.join(f'{v:.0f}' for v in r['all'])}; torch {', '.join(f'{v:.0f}' for v in torch[name]['all'])}")
print(f"torch {next(iter(torch.values()))['torch']}, {next(iter(ours.values()))['threads']} threads")
PY
echo "bench-trainer: done; $(uptime | sed 's/.*load/load/')"
