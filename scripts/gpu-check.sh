#!/usr/bin/env bash
# The prepared GPU check of erc-train on CUDA, for a machine with an NVIDIA GPU, Python with torch (cu130),
# transformers and torchvision, and no Rust toolchain or network. It only runs what was built beforehand:
#
#   here (Rust, no GPU):  make gpu-bundle        # gpu/erc-train.gz (the CUDA binary), gpu/data.tar.gz (a small
#                                                # extracted synth dataset), gpu/glove.txt — git-ignored, ~20 MB
#   there:                bash scripts/gpu-check.sh [OUT]       # the device tool: carry ["gpu"], OUT=$OUT
#   rehearsal here:       bash scripts/gpu-check.sh --rehearse [OUT]   # the CPU build, small sizes, same steps
#
# Steps (each bounded by a timeout; the whole run is sized for ≤ 8 minutes on an H200):
#   1. the machine: GPU, driver, torch;
#   2. `erc-train selfcheck --sections ops,parity`: every op's device path against its CPU kernel, and GPT-2,
#      wav2vec2 and ResNet-50 outputs and weight gradients against PyTorch's (tiny checkpoints, fp32, ≤ 1e-4);
#   3. training on the device: the demo config and a GPT-2 + ResNet-50 + wav2vec2 config (tiny checkpoints), a few
#      epochs each; the loss must fall and the report be written; data wait and peak memory from metrics.jsonl;
#   4. benchmarks, fp32 and tf32: forward+backward per batch of GPT-2 small, wav2vec2-base and ResNet-50 at their
#      real sizes and the reference's batch sizes, and one training step of fusion-mha-adv (row 15, batch 8), ours
#      (`selfcheck --sections bench`) and PyTorch eager's (scripts/bench_gpu_torch.py), with the ratios.
# Everything lands in OUT (default gpu-results/): gpu-check.md (the tables) and the raw JSON of every step.
# Exit status: non-zero when a parity check or a training check failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

REHEARSE=0
if [ "${1:-}" = "--rehearse" ]; then REHEARSE=1; shift; fi
OUT=${1:-${OUT:-gpu-results}}
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
REPORT="$OUT/gpu-check.md"
FAILED=0
log() { echo "gpu-check: $*" | tee -a "$OUT/log.txt" >&2; }
: > "$OUT/log.txt"

# ---- the binary, the libraries, the data
if [ "$REHEARSE" = 1 ]; then
  DEVICE=cpu; QUICK=--quick; BENCH_ITER=1; RESNET_BATCH=2; EPOCHS=2
  ERC=target/release/erc-train
  [ -x "$ERC" ] || { log "no $ERC: run make build first"; exit 1; }
else
  DEVICE=cuda; QUICK=; BENCH_ITER=${BENCH_ITER:-3}; RESNET_BATCH=${RESNET_BATCH:-64}; EPOCHS=3
  ERC="$WORK/erc-train"
  if [ -f gpu/erc-train.gz ]; then gzip -dc gpu/erc-train.gz > "$ERC"; chmod +x "$ERC"
  elif [ -x target-cuda/release/erc-train ]; then ERC=target-cuda/release/erc-train
  else log "no gpu/erc-train.gz (make gpu-bundle) nor target-cuda/release/erc-train (make cuda)"; exit 1; fi
  # the CUDA 13 libraries of the Python environment's nvidia-* packages (a torch cu130 install has them)
  NV_LIBS=$("$PYTHON" - <<'PY' 2>/dev/null
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
print(":".join(sorted({d for r in roots for d in glob.glob(os.path.join(r, "**", "lib"), recursive=True)})))
PY
)
  export LD_LIBRARY_PATH="${NV_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if [ -f gpu/data.tar.gz ]; then tar -xzf gpu/data.tar.gz -C "$WORK"; DATA="$WORK/data"; GLOVE=gpu/glove.txt
else log "no gpu/data.tar.gz (make gpu-bundle)"; exit 1; fi
FIXTURES=trainer/tests/fixtures/backbones

{
  echo "# GPU check of erc-train ($(date -u +%Y-%m-%d), device $DEVICE$([ "$REHEARSE" = 1 ] && echo ', CPU rehearsal'))"
  echo
} > "$REPORT"

# ---- 1. the machine
{
  echo "## Machine"
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | head -3 || echo "no nvidia-smi"
  "$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1
  echo "erc-train: $("$ERC" --version 2>&1)"
  echo '```'
  echo
} >> "$REPORT"

# ---- 2. ops and backbone parity on the device
log "ops and parity on $DEVICE"
if timeout 300 "$ERC" selfcheck --device "$DEVICE" --fixtures "$FIXTURES" --sections ops,parity \
     --json "$OUT/parity.json" > "$OUT/parity.txt" 2>&1; then
  PARITY=ok
else
  PARITY=FAILED; FAILED=1
fi
{ echo "## Ops and backbone parity ($PARITY)"; echo '```'; cat "$OUT/parity.txt"; echo '```'; echo; } >> "$REPORT"

# ---- 3. training on the device
train_check() {  # name, extra erc-train args...
  local name=$1; shift
  log "training $name on $DEVICE"
  if ! timeout 300 "$ERC" --data "$DATA" --out "$WORK/runs-$name" --device "$DEVICE" --epochs "$EPOCHS" "$@" \
       > "$OUT/train-$name.txt" 2>&1; then
    echo "| $name | FAILED: $(grep -m1 -i error "$OUT/train-$name.txt" | cut -c1-150) | | | |" >> "$REPORT"; FAILED=1; return
  fi
  local run; run=$(ls -d "$WORK/runs-$name"/*/ | head -1)
  cp "$run/metrics.jsonl" "$OUT/metrics-$name.jsonl"; cp "$run/summary.json" "$OUT/summary-$name.json"
  "$PYTHON" - "$run" "$name" >> "$REPORT" <<'PY' || FAILED=1
import json, os, sys
run, name = sys.argv[1], sys.argv[2]
lines = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
first, last = lines[0]["train_loss"], lines[-1]["train_loss"]
report = os.path.isfile(os.path.join(run, "report-valid.txt")) and os.path.isfile(os.path.join(run, "summary.json"))
falls = last < first
wait = sum(l["data_wait_seconds"] for l in lines) / max(1e-9, sum(l["data_wait_seconds"] + l["compute_seconds"] for l in lines))
peak = max((l["peak_memory_bytes"] or 0) for l in lines) / 2**30
rate = sum(l["train_samples_per_s"] for l in lines) / len(lines)
status = "ok" if falls and report else "FAILED"
print(f"| {name} | {status}: loss {first:.4f} → {last:.4f} over {len(lines)} epochs, report {'written' if report else 'MISSING'} | {rate:.1f} | {100 * wait:.1f}% | {peak:.2f} GiB |")
sys.exit(0 if status == "ok" else 1)
PY
}
{
  echo "## Training on the device"
  echo
  echo "| config | outcome | samples/s | data wait | peak memory |"
  echo "|---|---|---|---|---|"
} >> "$REPORT"
train_check demo --config configs/demo-glove-waveform.yml --glove "$GLOVE" --batch-size 16
cat > "$WORK/backbones.yml" <<'YML'
# GPT-2 + ResNet-50 + wav2vec2 with attention fusion (row 15's model) on the tiny checkpoints, sized for a check
classifier_name: gpu-check-backbones
classifier_classes: [anger, disgust, fear, joy, neutral, sadness, surprise]
classifier_loss_fn: dice
classifier_learning_rate: 0.001
classifier_warmup_steps: 0
modules_text_encoder: gpt2
modules_visual_encoder: resnet50
modules_audio_encoder: wav2vec2
modules_fusion: multi_headed_attn
fusion_out_features: 64
fusion_attention_heads_degree: 3
audio_input: normalized_mono
audio_in_features: 16000
visual_short_side: 64
feedforward_layers:
  - out_features: 32
    dropout: 0.0
batch_size: 8
YML
train_check backbones --config "$WORK/backbones.yml" --text-model "$FIXTURES/gpt2-tiny" \
  --audio-model "$FIXTURES/wav2vec2-tiny" --visual-model "$FIXTURES/resnet50-tiny"
echo >> "$REPORT"

# ---- 4. benchmarks against PyTorch eager
log "benchmarks (ours)"
timeout 420 "$ERC" selfcheck --device "$DEVICE" --sections bench $QUICK --iterations "$BENCH_ITER" \
  --resnet-batch "$RESNET_BATCH" --json "$OUT/bench-ours.json" > "$OUT/bench-ours.txt" 2>&1 || log "our benchmark failed (see bench-ours.txt)"
log "benchmarks (PyTorch)"
timeout 420 "$PYTHON" scripts/bench_gpu_torch.py --device "$DEVICE" $QUICK --iterations "$BENCH_ITER" \
  --resnet-batch "$RESNET_BATCH" > "$OUT/bench-torch.jsonl" 2> "$OUT/bench-torch.txt" || log "the PyTorch benchmark failed (see bench-torch.txt)"
"$PYTHON" - "$OUT/bench-ours.json" "$OUT/bench-torch.jsonl" >> "$REPORT" <<'PY'
import json, sys
try:
    ours = json.load(open(sys.argv[1])).get("bench", [])
except Exception as e:
    ours = []
    print(f"(no results of ours: {e})")
torch = [json.loads(l) for l in open(sys.argv[2]) if l.strip().startswith("{")]
key = lambda r: (r.get("name"), r.get("precision"))
theirs = {key(r): r for r in torch}
print("## Benchmarks: ours vs PyTorch eager on the same device")
print()
print("| workload | precision | batch | ours s | PyTorch s | ratio (PyTorch / ours) | ours samples/s | ours peak | PyTorch peak |")
print("|---|---|---|---|---|---|---|---|---|")
gib = lambda b: f"{b / 2**30:.1f} GiB" if b else "?"
for r in ours:
    t = theirs.get(key(r), {})
    o_s, t_s = r.get("total_s"), t.get("total_s")
    ratio = f"{t_s / o_s:.2f}x" if o_s and t_s and o_s == o_s else "–"
    o = f"{o_s:.4f}" if r.get("error") is None else f"failed: {r['error'][:60]}"
    p = f"{t_s:.4f}" if t.get("error") is None and t_s else f"failed: {str(t.get('error'))[:60]}"
    print(f"| {r['name']} | {r['precision']} | {r['batch']} | {o} | {p} | {ratio} | {r.get('samples_per_s', float('nan')):.1f} | {gib(r.get('peak_memory_bytes'))} | {gib(t.get('peak_memory_bytes'))} |")
PY
echo >> "$REPORT"
cat "$REPORT"
log "results in $OUT ($([ $FAILED = 0 ] && echo 'all checks passed' || echo 'SOME CHECKS FAILED'))"
exit $FAILED
