#!/usr/bin/env bash
# ETL benchmark (`make bench`): throughput, CPU time and peak memory of `meld-etl extract` on N synthetic clips,
# against a full decode of the same clips by the ffmpeg CLI (`ffmpeg -threads 1 -i CLIP -f null -`).
#
# Prints: clips/s at --jobs 1 and --jobs 2; CPU-s per clip of extract vs ffmpeg's full decode (target <= 0.6x);
# peak RSS at --jobs 2 (target <= 300 MB); the speed-up over the reference Python ETL (1.45 clips/s measured on
# this kind of machine on 1-3.5 s 720p clips); and the cost of `--faces` (RetinaFace MobileNet-0.25 on every
# frame of every mosaic): clips/s and CPU-s per clip at --jobs 2 with and without it (target: <= 2x per clip), once
# with the default engine (`auto`: onnxruntime when `make models` fetched its library, else tract) and once with
# tract; the engine each run used is read from its manifest. The load average is printed: other work on the
# machine inflates wall times (CPU-s per clip less so).
#
# Environment: BENCH_DIALOGUES (default 12, about 120 clips), BENCH_DIR (default: a temporary folder, removed),
# MELD_BIN_DIR (default: ${CARGO_TARGET_DIR:-target}/release), FACE_MODEL (default models/retinaface-mnet025.onnx,
# from `make models`).
set -euo pipefail

BIN_DIR=${MELD_BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
ETL="$BIN_DIR/meld-etl"
DIALOGUES=${BENCH_DIALOGUES:-12}
REFERENCE_CLIPS_PER_S=1.45

[ -x "$ETL" ] || { echo "bench: $ETL is not built (run make build)" >&2; exit 1; }
command -v ffmpeg >/dev/null || { echo "bench: ffmpeg (the CLI) is needed" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "bench: /usr/bin/time (GNU time) is needed" >&2; exit 1; }
FACE_MODEL=${FACE_MODEL:-models/retinaface-mnet025.onnx}
[ -f "$FACE_MODEL" ] || { echo "bench: $FACE_MODEL is missing (run make models)" >&2; exit 1; }

if [ -n "${BENCH_DIR:-}" ]; then
  WORK=$BENCH_DIR; mkdir -p "$WORK"
else
  WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
fi

echo "bench: synthesising $DIALOGUES train dialogues (1-3.5 s 720p clips, like the reference's measurement) ..."
"$ETL" synth --out "$WORK/raw" --dialogues "$DIALOGUES" --seed 3 --durations 1-3.5 >/dev/null 2>&1
mapfile -t CLIPS < <(find "$WORK/raw" -name 'dia*_utt*.mp4' | sort)
N=${#CLIPS[@]}
printf '%s\n' "${CLIPS[@]}" > "$WORK/clips.txt"
echo "bench: $N clips"

# GNU time's fields: wall seconds, user seconds, system seconds, peak RSS (KiB).
measure() { /usr/bin/time -f '%e %U %S %M' -o "$WORK/time.txt" "$@" >/dev/null 2>"$WORK/stderr.txt" || {
  cat "$WORK/stderr.txt" >&2; exit 1; }; cat "$WORK/time.txt" | tail -n 1; }

# Warm the page cache so both sides read the clips from memory.
cat "${CLIPS[@]}" > /dev/null

read -r FF_WALL FF_USER FF_SYS FF_RSS < <(measure bash -c \
  'while read -r clip; do ffmpeg -nostdin -v error -threads 1 -i "$clip" -f null - || exit 1; done < "$1"' _ "$WORK/clips.txt")
# The same decode timed by ffmpeg itself (-benchmark: the decode loop only, without process start-up and library
# loading, which the per-clip CLI runs above pay and one extract process pays once).
FF_LOOP=$(while read -r clip; do ffmpeg -nostdin -benchmark -threads 1 -i "$clip" -f null - 2>&1 | grep -o 'utime=[0-9.]*s stime=[0-9.]*s'; done < "$WORK/clips.txt" \
  | sed 's/[a-z=]//g' | awk '{u += $1; s += $2} END {printf "%.3f", u + s}')
read -r J1_WALL J1_USER J1_SYS J1_RSS < <(measure "$ETL" extract --raw "$WORK/raw" --out "$WORK/out1" --jobs 1 --force)
read -r J2_WALL J2_USER J2_SYS J2_RSS < <(measure "$ETL" extract --raw "$WORK/raw" --out "$WORK/out2" --jobs 2 --force)
read -r F2_WALL F2_USER F2_SYS F2_RSS < <(measure "$ETL" extract --raw "$WORK/raw" --out "$WORK/out3" --jobs 2 --force \
  --faces "$FACE_MODEL")
read -r T2_WALL T2_USER T2_SYS T2_RSS < <(measure "$ETL" extract --raw "$WORK/raw" --out "$WORK/out4" --jobs 2 --force \
  --faces "$FACE_MODEL" --face-engine tract)
engine() { sed -n 's/.*"engine": *"\([a-z]*\)".*/\1/p' "$1/manifest.json" | head -n 1; }
F2_ENGINE=$(engine "$WORK/out3"); T2_ENGINE=$(engine "$WORK/out4")
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)

awk -v n="$N" -v ref="$REFERENCE_CLIPS_PER_S" -v ffloop="$FF_LOOP" \
    -v ffw="$FF_WALL" -v ffu="$FF_USER" -v ffs="$FF_SYS" \
    -v j1w="$J1_WALL" -v j1u="$J1_USER" -v j1s="$J1_SYS" -v j1r="$J1_RSS" \
    -v j2w="$J2_WALL" -v j2u="$J2_USER" -v j2s="$J2_SYS" -v j2r="$J2_RSS" \
    -v f2w="$F2_WALL" -v f2u="$F2_USER" -v f2s="$F2_SYS" -v f2r="$F2_RSS" -v f2e="$F2_ENGINE" \
    -v t2w="$T2_WALL" -v t2u="$T2_USER" -v t2s="$T2_SYS" -v t2r="$T2_RSS" -v t2e="$T2_ENGINE" -v load="$LOAD" 'BEGIN {
  ffcpu = (ffu + ffs) / n; c1 = (j1u + j1s) / n; c2 = (j2u + j2s) / n; f2 = (f2u + f2s) / n; t2 = (t2u + t2s) / n;
  printf "\n%-34s %9s %12s %12s %10s\n", "run (" n " clips)", "clips/s", "CPU-s/clip", "vs ffmpeg", "peak RSS";
  printf "%-34s %9.2f %12.3f %12s %10s\n", "ffmpeg -threads 1 -f null (full)", n / ffw, ffcpu, "1.00x", "-";
  printf "%-34s %9s %12.3f %11.2fx %10s\n", "  same, decode loop only", "-", ffloop / n, ffloop / n / ffcpu, "-";
  printf "%-34s %9.2f %12.3f %11.2fx %7.0f MB\n", "meld-etl extract --jobs 1", n / j1w, c1, c1 / ffcpu, j1r / 1024;
  printf "%-34s %9.2f %12.3f %11.2fx %7.0f MB\n", "meld-etl extract --jobs 2", n / j2w, c2, c2 / ffcpu, j2r / 1024;
  printf "%-34s %9.2f %12.3f %11.2fx %7.0f MB\n", "  + --faces (auto: " f2e ")", n / f2w, f2, f2 / ffcpu, f2r / 1024;
  printf "%-34s %9.2f %12.3f %11.2fx %7.0f MB\n", "  + --faces --face-engine " t2e, n / t2w, t2, t2 / ffcpu, t2r / 1024;
  printf "\nratios: CPU per clip vs ffmpeg full decode = %.2fx (target <= 0.60x) %s\n", c2 / ffcpu, (c2 / ffcpu <= 0.6 ? "OK" : "MISSED");
  printf "        peak RSS at --jobs 2 = %.0f MB (target <= 300 MB) %s\n", j2r / 1024, (j2r / 1024 <= 300 ? "OK" : "MISSED");
  printf "        throughput at --jobs 2 = %.2f clips/s = %.1fx the reference ETL (%.2f clips/s; aim 20x)\n", n / j2w, n / j2w / ref, ref;
  printf "        --jobs 2 / --jobs 1 = %.2fx\n", j1w / j2w;
  printf "        --faces at --jobs 2 (%s): %.2f vs %.2f clips/s; per clip %.2fx the wall time, %.2fx the CPU time (target <= 2x) %s\n", f2e, n / f2w, n / j2w, f2w / j2w, f2 / c2, (f2 / c2 <= 2 ? "OK" : "MISSED");
  printf "        --faces at --jobs 2 (%s): %.2f clips/s; per clip %.2fx the wall time, %.2fx the CPU time\n", t2e, n / t2w, t2w / j2w, t2 / c2;
  printf "        load average during the runs: %s (2 cores)\n", load;
  printf "        CPU per clip vs ffmpeg decode loop only (no start-up) = %.2fx\n", c2 / (ffloop / n);
}'
