#!/usr/bin/env bash
# Trainer benchmark (`make bench`): training samples/s of t-um-glove, a-um-waveform and the baseline's concat
# fusion + head, in erc-train (candle, CPU) and in PyTorch (CPU) on the same input shapes and thread count, and
# the ratio ours / PyTorch (target >= 1.0x).
#
# PyTorch comes from PYTHON (default: .venv/bin/python if it exists, else python3); if it has no torch, the script
# says how to get it and stops. Environment: BENCH_STEPS (default 20), BENCH_THREADS (default: all cores).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

STEPS=${BENCH_STEPS:-20}
THREADS=${BENCH_THREADS:-$(nproc)}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "bench-trainer: $PYTHON has no torch; install it (e.g. python3 -m venv .venv && .venv/bin/pip install torch) or set PYTHON" >&2
  exit 1
fi

WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
echo "bench-trainer: erc-train (candle), $STEPS steps of batch 64, $THREADS threads ..."
RAYON_NUM_THREADS=$THREADS BENCH_STEPS=$STEPS cargo test --release --workspace --test bench_train -q \
  -- --ignored --nocapture 2>/dev/null | grep '^{' > "$WORK/ours.jsonl"
echo "bench-trainer: PyTorch ..."
"$PYTHON" scripts/bench_train_torch.py --steps "$STEPS" --threads "$THREADS" > "$WORK/torch.jsonl"

"$PYTHON" - "$WORK/ours.jsonl" "$WORK/torch.jsonl" <<'PY'
import json, sys
ours = {r["model"]: r for r in map(json.loads, open(sys.argv[1]))}
torch = {r["model"]: r for r in map(json.loads, open(sys.argv[2]))}
print(f"{'model':<16} {'erc-train':>12} {'pytorch':>12} {'ratio':>8}   (samples/s, training, CPU)")
for name, r in ours.items():
    t = torch[name]["samples_per_s"]
    print(f"{name:<16} {r['samples_per_s']:>12.1f} {t:>12.1f} {r['samples_per_s'] / t:>7.2f}x")
print(f"torch {next(iter(torch.values()))['torch']}, {next(iter(ours.values()))['threads']} threads")
PY
