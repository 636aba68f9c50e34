#!/usr/bin/env bash
# The prepared GPU check of erc-train on CUDA, for a machine with an NVIDIA GPU, Python with torch (cu130),
# transformers and torchvision, and no Rust toolchain or network. It only runs what was built beforehand:
#
#   here (Rust, no GPU):  make gpu-bundle      # gpu/erc-train.gz (the CUDA binary), gpu/data.tar.gz (a small
#                                              # extracted synth dataset), gpu/glove.txt — git-ignored, ≤ 64 MiB
#   there:                bash scripts/gpu-check.sh [--deadline SECONDS] [OUT]   # device tool: carry ["gpu"], OUT=$OUT
#   rehearsal here:       make gpu-rehearse    # the CPU build, small sizes, the same steps, deadline 240 s
#
# Built to lose nothing: every step gets at most the time left before the deadline (default 540 s, inside the GPU
# machine's 10 minutes per command, with a reserve for the last write); each step appends its section to
# OUT/gpu-check.md (and prints it) the moment it finishes, so a kill at any point leaves a readable report of
# everything done; results are appended row by row as they are measured; OUT holds exactly two files, the report
# and one archive of the raw files (gpu-check-raw.tar.gz, rewritten after every step), flat, well under the
# 8 files × 16 MiB that come back. A failed row reads "failed: why"; nothing crashes the formatting.
#
# Steps, most valuable first (each: its own budget, capped by the time left):
#   machine · ops on the device vs their CPU kernels · backbone parity with PyTorch · two trainings whose loss must
#   fall · benchmarks fp32 (ours, PyTorch eager with SDPA attention, PyTorch eager with eager attention) · tf32 ·
#   compute-sanitizer memcheck over the ops, with what time is left.
# Exit status: non-zero when a check (ops, parity, training) failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEADLINE=540
REHEARSE=0
OUT=
while [ $# -gt 0 ]; do
  case "$1" in
    --deadline) DEADLINE=$2; shift 2 ;;
    --deadline=*) DEADLINE=${1#*=}; shift ;;
    --rehearse) REHEARSE=1; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) OUT=$1; shift ;;
  esac
done
OUT=${OUT:-${OUT_DIR:-gpu-results}}
START=$(date +%s)
RESERVE=12 # seconds kept for the final archive and summary

mkdir -p "$OUT"
REPORT="$OUT/gpu-check.md"
ARCHIVE="$OUT/gpu-check-raw.tar.gz"
rm -f "$REPORT" "$ARCHIVE"
WORK=$(mktemp -d)
RAW="$WORK/raw"
mkdir -p "$RAW"
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
FAILED=0
SUMMARY="$WORK/summary.txt"
: > "$SUMMARY"

left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
log() { echo "gpu-check [$(( $(date +%s) - START ))s]: $*" | tee -a "$RAW/log.txt" >&2; }

# The raw files, packed aside and renamed: the archive in OUT is always a whole one.
pack() {
  tar -czf "$WORK/raw.tar.gz" -C "$WORK" raw 2>/dev/null && mv -f "$WORK/raw.tar.gz" "$ARCHIVE"
}

# Appends stdin to the report (and to stdout, a second way back), then repacks the raw files.
section() {
  local block="$WORK/section.md"
  cat > "$block"
  echo >> "$block"
  cat "$block" >> "$REPORT"
  cat "$block"
  pack
}

# step NAME BUDGET COMMAND...: runs COMMAND with at most BUDGET seconds (fewer when less is left), its output in
# RAW/NAME.txt. Returns the command's status, 124 when stopped by the time limit, 125 when skipped for time.
step() {
  local name=$1 budget=$2; shift 2
  local remaining=$(( $(left) - RESERVE ))
  [ "$remaining" -lt "$budget" ] && budget=$remaining
  if [ "$budget" -lt 5 ]; then
    log "$name: skipped, out of time"
    echo "| $name | skipped: out of time | |" >> "$SUMMARY"
    return 125
  fi
  log "$name (≤ ${budget}s)"
  local t0; t0=$(date +%s)
  timeout --kill-after=5 "$budget" "$@" > "$RAW/$name.txt" 2>&1
  local rc=$?
  local took=$(( $(date +%s) - t0 ))
  local outcome=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then outcome="stopped at its ${budget}s limit"; rc=124
  elif [ $rc -ne 0 ]; then outcome="exit $rc"; fi
  echo "| $name | $outcome | ${took}s |" >> "$SUMMARY"
  log "$name: $outcome in ${took}s"
  return $rc
}

# The last word: the steps' outcomes, the archive, the file limits. Runs on every exit (also after a TERM).
finish() {
  trap - EXIT TERM INT
  {
    echo "## Steps"
    echo
    echo "| step | outcome | took |"
    echo "|---|---|---|"
    cat "$SUMMARY"
    echo
    echo "Finished after $(( $(date +%s) - START ))s of a ${DEADLINE}s deadline; $([ $FAILED = 0 ] && echo 'every check passed' || echo 'SOME CHECKS FAILED'). Raw results: $(basename "$ARCHIVE")."
  } | section
  local files; files=$(find "$OUT" -mindepth 1 | wc -l)
  local big; big=$(find "$OUT" -type f -size +16M | wc -l)
  local deep; deep=$(find "$OUT" -mindepth 2 | wc -l)
  if [ "$files" -gt 8 ] || [ "$big" -gt 0 ] || [ "$deep" -gt 0 ]; then
    log "OUT breaks the limits: $files entries (≤ 8), $big over 16 MiB, $deep nested"
    FAILED=1
  fi
  rm -rf "$WORK"
  log "done: $(ls "$OUT" | tr '\n' ' ')"
  exit $FAILED
}
trap finish EXIT
trap 'log "stopped by a signal"; exit 1' TERM INT

# ---- the binary, the libraries, the data
if [ "$REHEARSE" = 1 ]; then
  DEVICE=cpu; QUICK=--quick; ITERATIONS=1; RESNET_BATCH=2; EPOCHS=2
  ERC=target/release/erc-train
  [ -x "$ERC" ] || { log "no $ERC: run make build first"; exit 1; }
else
  DEVICE=cuda; QUICK=; ITERATIONS=${ITERATIONS:-3}; EPOCHS=3
  # ResNet-50 at the reference's batch 64 x 3 x 256 x 721 needs ~50 GiB in PyTorch; 32 fits an H100 with room
  RESNET_BATCH=${RESNET_BATCH:-32}
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
SELF="$RAW/selfcheck.jsonl"

{
  echo "# GPU check of erc-train ($(date -u +%Y-%m-%dT%H:%MZ), device $DEVICE$([ "$REHEARSE" = 1 ] && echo ', CPU rehearsal'))"
  echo
  echo "Deadline ${DEADLINE}s; each section is written when its step ends (a missing section: the run stopped first)."
} | section

# ---- 1. the machine
cat > "$WORK/machine.sh" <<'SH'
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | head -3 || echo "no nvidia-smi"
"$1" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "transformers", transformers.__version__)' 2>&1
echo "erc-train: $("$2" --version 2>&1)"
echo "cores: $(nproc), memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
SH
step machine 20 bash "$WORK/machine.sh" "$PYTHON" "$ERC"
{ echo "## Machine"; echo '```'; cat "$RAW/machine.txt"; echo '```'; } | section

# ---- 2. every op on the device against its CPU kernel
step ops 120 "$ERC" selfcheck --device "$DEVICE" --sections ops --jsonl "$SELF"
{ echo "## Ops on the device against their CPU kernels"; echo; "$PYTHON" scripts/gpu_report.py ops "$SELF"; } | section
"$PYTHON" scripts/gpu_report.py ops "$SELF" > /dev/null || FAILED=1

# ---- 3. backbone parity with PyTorch (tiny checkpoints, fp32)
step parity 90 "$ERC" selfcheck --device "$DEVICE" --fixtures "$FIXTURES" --sections parity --jsonl "$SELF"
{ echo "## Backbone parity with PyTorch (fp32, ≤ 1e-4)"; echo; "$PYTHON" scripts/gpu_report.py parity "$SELF"; } | section
"$PYTHON" scripts/gpu_report.py parity "$SELF" > /dev/null || FAILED=1

# ---- 4. training on the device: the loss must fall and the report be written
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
TRAIN_ROWS="$WORK/train-rows.md"
: > "$TRAIN_ROWS"
train_check() {  # name, budget, extra erc-train args...
  local name=$1 budget=$2; shift 2
  step "train-$name" "$budget" "$ERC" --data "$DATA" --out "$WORK/runs-$name" --device "$DEVICE" --epochs "$EPOCHS" "$@"
  local run; run=$(ls -d "$WORK/runs-$name"/*/ 2>/dev/null | head -1)
  [ -n "$run" ] && cp "$run"/metrics.jsonl "$RAW/metrics-$name.jsonl" 2>/dev/null
  [ -n "$run" ] && cp "$run"/summary.json "$RAW/summary-$name.json" 2>/dev/null
  "$PYTHON" scripts/gpu_report.py train "$name" "${run:--}" >> "$TRAIN_ROWS" || FAILED=1
}
train_check demo 75 --config configs/demo-glove-waveform.yml --glove "$GLOVE" --batch-size 16
train_check backbones 90 --config "$WORK/backbones.yml" --text-model "$FIXTURES/gpt2-tiny" \
  --audio-model "$FIXTURES/wav2vec2-tiny" --visual-model "$FIXTURES/resnet50-tiny"
{
  echo "## Training on the device ($EPOCHS epochs)"
  echo
  echo "| config | outcome | samples/s | data wait | peak memory |"
  echo "|---|---|---|---|---|"
  cat "$TRAIN_ROWS"
} | section

# ---- 5. benchmarks: ours and PyTorch eager on the same work (one plan), fp32 first, then tf32
PLAN="$RAW/plan.json"
"$ERC" selfcheck $QUICK --iterations "$ITERATIONS" --resnet-batch "$RESNET_BATCH" --plan "$PLAN" 2>> "$RAW/log.txt" \
  || log "could not write the benchmark plan"
OURS="$RAW/bench-ours.jsonl"; SDPA="$RAW/bench-torch-sdpa.jsonl"; EAGER="$RAW/bench-torch-eager.jsonl"
: > "$OURS"; : > "$SDPA"; : > "$EAGER"
bench_section() {
  { echo "## Benchmarks: ours vs PyTorch eager on the same device ($1)"; echo
    "$PYTHON" scripts/gpu_report.py bench "$OURS" "$SDPA" "$EAGER"; } | section
}
# attention differs between SDPA and eager only in GPT-2 and wav2vec2 (and the step that holds them)
EAGER_WORKLOADS=gpt2,wav2vec2,step
step bench-ours-fp32 200 "$ERC" selfcheck --device "$DEVICE" --sections bench $QUICK --iterations "$ITERATIONS" \
  --resnet-batch "$RESNET_BATCH" --precisions fp32 --jsonl "$OURS" --allow-bench-failures
step bench-torch-sdpa-fp32 150 "$PYTHON" scripts/bench_gpu_torch.py --plan "$PLAN" --device "$DEVICE" \
  --precisions fp32 --attention sdpa
cat "$RAW/bench-torch-sdpa-fp32.txt" >> "$SDPA" 2>/dev/null
step bench-torch-eager-fp32 100 "$PYTHON" scripts/bench_gpu_torch.py --plan "$PLAN" --device "$DEVICE" \
  --precisions fp32 --attention eager --workloads "$EAGER_WORKLOADS"
cat "$RAW/bench-torch-eager-fp32.txt" >> "$EAGER" 2>/dev/null
bench_section fp32
# tf32: on a CPU the same runs (a rehearsal of the steps; the precision only changes GPU products)
step bench-ours-tf32 120 "$ERC" selfcheck --device "$DEVICE" --sections bench $QUICK --iterations "$ITERATIONS" \
  --resnet-batch "$RESNET_BATCH" --precisions tf32 --jsonl "$OURS" --allow-bench-failures
step bench-torch-sdpa-tf32 100 "$PYTHON" scripts/bench_gpu_torch.py --plan "$PLAN" --device "$DEVICE" \
  --precisions tf32 --attention sdpa
cat "$RAW/bench-torch-sdpa-tf32.txt" >> "$SDPA" 2>/dev/null
bench_section "fp32 and tf32"
if [ "$REHEARSE" = 0 ]; then
  # ---- 6. with the time left: out-of-bounds accesses and races in our kernels, under compute-sanitizer
  if command -v compute-sanitizer > /dev/null; then
    step sanitizer-memcheck 150 compute-sanitizer --tool memcheck --print-limit 20 \
      "$ERC" selfcheck --device cuda --sections ops
    { echo "## compute-sanitizer memcheck over the ops"; echo '```'; tail -25 "$RAW/sanitizer-memcheck.txt" 2>/dev/null; echo '```'; } | section
  fi
fi
