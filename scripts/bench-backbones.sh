#!/usr/bin/env bash
# Forward+backward time per training batch of the trainable GPT-2 small and wav2vec 2.0 base (random weights, the
# reference's batch and input sizes), on CPU. Usage: scripts/bench-backbones.sh [gpt2|wav2vec2|all] [ITERATIONS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BENCH_BACKBONES="${1:-all}" BENCH_ITERATIONS="${2:-3}" \
    cargo test --release --workspace --test bench_backbones -- --ignored --nocapture
