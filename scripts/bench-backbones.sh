#!/usr/bin/env bash
# Backbone benchmark (`make bench`): forward+backward time per training batch of the trainable GPT-2 small,
# wav2vec 2.0 base and ResNet-50 (random weights, the reference's input sizes, batch 2) in erc-train (candle, CPU)
# and in PyTorch (CPU) with the same thread count, and the ratio PyTorch time / ours (> 1: we are faster).
#
# Usage: scripts/bench-backbones.sh [gpt2|wav2vec2|resnet50|all] [ITERATIONS]. PyTorch (with transformers and
# torchvision) comes from PYTHON (default: .venv/bin/python if it exists, else python3); without it only our side
# runs. BENCH_THREADS (default: all cores).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WHICH=${1:-all}
ITERATIONS=${2:-3}
THREADS=${BENCH_THREADS:-$(nproc)}
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
BACKBONES=$([ "$WHICH" = all ] && echo gpt2,wav2vec2,resnet50 || echo "$WHICH")
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT

echo "bench-backbones: $BACKBONES, $ITERATIONS iterations, $THREADS threads; $(uptime | sed 's/.*load/load/')"
# MALLOC_ARENA_MAX=1: libtest runs the benchmark on a spawned thread, whose glibc arena must mmap large blocks
# afresh every time; one arena makes it allocate as the trainer's main thread does (see trainer/src/heap.rs).
MALLOC_ARENA_MAX=1 RAYON_NUM_THREADS=$THREADS BENCH_JSON="$WORK/ours.jsonl" BENCH_BACKBONES=$WHICH BENCH_ITERATIONS=$ITERATIONS \
  cargo test --release --workspace --test bench_backbones -- --ignored --nocapture
if ! "$PYTHON" -c "import torch, torchvision, transformers" 2>/dev/null; then
  echo "bench-backbones: $PYTHON lacks torch/torchvision/transformers (.venv/bin/pip install torch torchvision transformers); no PyTorch comparison" >&2
  exit 0
fi
"$PYTHON" scripts/bench_backbones_torch.py --backbones "$BACKBONES" --iterations "$ITERATIONS" --threads "$THREADS" \
  > "$WORK/torch.jsonl"

"$PYTHON" - "$WORK/ours.jsonl" "$WORK/torch.jsonl" <<'PY'
import json, sys
ours = {r["backbone"]: r for r in map(json.loads, open(sys.argv[1]))}
torch = {r["backbone"]: r for r in map(json.loads, open(sys.argv[2]))}
print(f"{'backbone':<10} {'batch':<20} {'ours fwd+bwd s':>15} {'pytorch s':>10} {'ratio':>7}")
for name, o in ours.items():
    t = torch.get(name)
    if not t:
        continue
    ot, tt = o["forward_s"] + o["backward_s"], t["forward_s"] + t["backward_s"]
    print(f"{name:<10} {o['batch']:<20} {ot:>15.2f} {tt:>10.2f} {tt / ot:>6.2f}x")
PY
