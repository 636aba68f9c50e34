#!/usr/bin/env bash
# Prediction benchmark (`make bench`): `erc-train predict` of the demo model (GloVe + raw waveform) over a
# synthetic episode of about 10 minutes and 150 utterances (`meld-etl synth --episode`), on the CPU: the whole
# command's wall time (segmenting the video by seeking, decoding and preparing on worker threads, the model),
# its CPU time, and utterances per second. Target: well under a minute on 2 cores.
#
# Environment: BENCH_EPISODE_DIALOGUES (default 60: ~16 test dialogues, ~150 utterances of 2–6 s).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=${BIN:-target/release}
GLOVE=${GLOVE:-models/glove.6B.50d.txt}
DIALOGUES=${BENCH_EPISODE_DIALOGUES:-60}
[ -f "$GLOVE" ] || { echo "bench-predict: no $GLOVE (make glove)" >&2; exit 1; }
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT

# the demo model, trained on a small synthetic tree
"$BIN/meld-etl" synth --out "$WORK/raw" --dialogues 12 --seed 7 --durations 1-3 > /dev/null
"$BIN/meld-etl" extract --raw "$WORK/raw" --out "$WORK/data" > /dev/null 2>&1
"$BIN/erc-train" --config configs/demo-glove-waveform.yml --data "$WORK/data" --out "$WORK/runs" \
  --glove "$GLOVE" --epochs 3 > /dev/null 2>&1
RUN=$(ls -d "$WORK"/runs/*/ | head -1)
# the episode
"$BIN/meld-etl" synth --episode --out "$WORK/episode" --dialogues "$DIALOGUES" --seed 11 --durations 2-6
SECONDS_OF_VIDEO=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$WORK/episode/episode.mp4")
LINES=$(grep -c -- '-->' "$WORK/episode/episode.srt")
echo "bench-predict: a ${SECONDS_OF_VIDEO%.*}-second episode, $LINES subtitle lines, $(nproc) cores; $(uptime | sed 's/.*load/load/')"
/usr/bin/time -f "%e %U %S" -o "$WORK/time" "$BIN/erc-train" predict --run "$RUN" \
  --video "$WORK/episode/episode.mp4" --subtitles "$WORK/episode/episode.srt" --out "$WORK/predict" \
  2> "$WORK/predict.log" | head -3
read -r wall user sys < "$WORK/time"
echo "bench-predict: wall ${wall} s, CPU $(echo "$user + $sys" | bc) s, $(echo "scale=1; $LINES / $wall" | bc) utterances/s (target: well under 60 s)"
