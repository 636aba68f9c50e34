#!/usr/bin/env bash
# `make gpu-rehearse`: scripts/gpu-check.sh on the CPU (the release build, small sizes, the same steps) with its
# 240 s deadline, twice — once killed with SIGKILL half way, after which OUT must still hold a readable report, and
# once whole, which must finish within its deadline with every section in the report — each time checking that
# OUT keeps to what comes back from a GPU machine: at most 8 files, flat, none over 16 MiB.
#
#   bash scripts/gpu-rehearse.sh [OUT]      # default gpu-results (the killed run: OUT-killed)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${1:-gpu-results}
KILLED="$OUT-killed"
DEADLINE=240
KILL_AFTER=${KILL_AFTER:-45}
problems=0
fail() { echo "gpu-rehearse: $*" >&2; problems=$((problems + 1)); }

limits() {  # OUT folder
  local n; n=$(find "$1" -mindepth 1 | wc -l)
  [ "$n" -le 8 ] || fail "$1 holds $n entries (at most 8 come back)"
  [ "$(find "$1" -mindepth 2 | wc -l)" -eq 0 ] || fail "$1 is not flat"
  [ "$(find "$1" -type f -size +16M | wc -l)" -eq 0 ] || fail "$1 has a file over 16 MiB"
}

rm -rf "$OUT" "$KILLED"
echo "gpu-rehearse: a run killed after ${KILL_AFTER}s" >&2
timeout -s KILL "$KILL_AFTER" bash scripts/gpu-check.sh --rehearse --deadline "$DEADLINE" "$KILLED" > /dev/null 2>&1
if [ -s "$KILLED/gpu-check.md" ] && head -1 "$KILLED/gpu-check.md" | grep -q '^# GPU check'; then
  echo "gpu-rehearse: killed run left $(grep -c '^## ' "$KILLED/gpu-check.md") section(s): $(grep '^## ' "$KILLED/gpu-check.md" | tr '\n' ';')" >&2
else
  fail "the killed run left no readable $KILLED/gpu-check.md"
fi
limits "$KILLED"

echo "gpu-rehearse: a whole run (deadline ${DEADLINE}s)" >&2
start=$(date +%s)
bash scripts/gpu-check.sh --rehearse --deadline "$DEADLINE" "$OUT" > "$OUT.log" 2>&1
rc=$?
took=$(( $(date +%s) - start ))
[ "$rc" -eq 0 ] || fail "gpu-check.sh exited $rc (see $OUT.log and $OUT/gpu-check.md)"
[ "$took" -le $((DEADLINE + 10)) ] || fail "the run took ${took}s, past its ${DEADLINE}s deadline"
for heading in "## Machine" "## Ops on the device" "## Backbone parity" "## Training on the device" \
               "## Benchmarks" "## Steps"; do
  grep -q "^$heading" "$OUT/gpu-check.md" 2>/dev/null || fail "no section \"$heading\" in $OUT/gpu-check.md"
done
grep -q "skipped: out of time\|stopped at its" "$OUT/gpu-check.md" && fail "a step ran out of time (see the Steps table)"
tar -tzf "$OUT/gpu-check-raw.tar.gz" 2>/dev/null | grep -q 'raw/selfcheck.jsonl' || fail "the archive lacks raw/selfcheck.jsonl"
limits "$OUT"
echo "gpu-rehearse: whole run ${took}s; OUT: $(ls "$OUT" | tr '\n' ' ')" >&2
[ "$problems" -eq 0 ] && echo "gpu-rehearse: passed" >&2
exit $(( problems > 0 ))
