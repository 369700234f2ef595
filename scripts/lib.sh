# Shared by scripts/test and scripts/demo: dependency install and build.
# shellcheck shell=bash

LMSCHED_APT_PACKAGES="build-essential cmake pkg-config curl libnng-dev libcurl4-openssl-dev \
libmsgpack-dev libjansson-dev libcmocka-dev libmicrohttpd-dev libxxhash-dev python3-pytest"

lmsched_missing_deps() {
    local missing=""
    for cmd in cc cmake pkg-config curl; do
        command -v "$cmd" >/dev/null 2>&1 || missing="$missing $cmd"
    done
    for mod in libcurl jansson cmocka libmicrohttpd msgpack libxxhash; do
        pkg-config --exists "$mod" 2>/dev/null || missing="$missing $mod"
    done
    [ -f /usr/include/nng/nng.h ] || [ -f /usr/local/include/nng/nng.h ] || missing="$missing nng"
    # The Python package's tests (tests/python) run with Debian's pytest.
    /usr/bin/python3 -c 'import pytest' >/dev/null 2>&1 || missing="$missing python3-pytest"
    echo "$missing"
}

# Installs the Debian packages when something is missing (as root, or with
# sudo), then the patched nng where the system's has bugs #1518, #1813 and
# #1713 (docs/nng.md).
lmsched_install_deps() {
    lmsched_install_packages && lmsched_install_nng
}

lmsched_install_packages() {
    local missing
    missing=$(lmsched_missing_deps)
    [ -z "$missing" ] && return 0
    echo "lmsched: missing:$missing; installing Debian packages" >&2
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo="sudo"
        else
            echo "lmsched: not root and no sudo; install these packages: $LMSCHED_APT_PACKAGES" >&2
            return 1
        fi
    fi
    # shellcheck disable=SC2086
    $sudo apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
            $LMSCHED_APT_PACKAGES >/dev/null || return 1
    missing=$(lmsched_missing_deps)
    if [ -n "$missing" ]; then
        echo "lmsched: still missing after install:$missing" >&2
        return 1
    fi
}

# nng older than 1.6.0 (Debian bookworm's 1.5.2) has bug #1518: a peer that
# connects and hangs up before the SP handshake stops the daemon's listener.
# There, scripts/nng-build makes a static nng with our fix from the
# platform's own source package (apt-get source; 15-45 s once, cached in
# /var/cache/lmsched/nng) and the build uses it (docs/nng.md).
# LMSCHED_SYSTEM_NNG=1 builds against the system's nng anyway (CMake warns).
lmsched_install_nng() {
    [ "${LMSCHED_SYSTEM_NNG:-0}" != 0 ] && return 0
    "$LMSCHED_ROOT/scripts/nng-build" needed || return 0
    "$LMSCHED_ROOT/scripts/nng-build" build >/dev/null && return 0
    echo "lmsched: could not build the patched nng (above); LMSCHED_SYSTEM_NNG=1 builds" \
        "with the system's nng instead, which has bug #1518 (docs/nng.md)" >&2
    return 1
}

# The prefix of the patched nng for CMake's LMSCHED_NNG_PREFIX, or nothing
# when the system's nng is used.
lmsched_nng_prefix() {
    [ "${LMSCHED_SYSTEM_NNG:-0}" != 0 ] && return 0
    "$LMSCHED_ROOT/scripts/nng-build" needed || return 0
    "$LMSCHED_ROOT/scripts/nng-build" prefix || true
}

# lmsched_build BUILD_DIR [cmake args...]
lmsched_build() {
    local dir=$1 nng_prefix
    shift
    nng_prefix=$(lmsched_nng_prefix)
    cmake -S "$LMSCHED_ROOT" -B "$dir" -DLMSCHED_WERROR=ON \
        -DLMSCHED_NNG_PREFIX="$nng_prefix" "$@" >/dev/null &&
        cmake --build "$dir" -j"$(nproc 2>/dev/null || echo 2)"
}

# Node for the tests of the HTTP front door with the real clients
# (tests/http/node: the openai JavaScript client, OpenAI's Agents SDK):
# Debian's nodejs and npm when `node` or `npm` is missing, then the packages
# of the committed lockfile with `npm ci` when node_modules is missing or
# older than it. The npm registry must be reachable for that; without Node
# or the packages those tests report themselves skipped, saying why.
lmsched_install_node() {
    local dir="$LMSCHED_ROOT/tests/http/node" sudo=""
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        echo "lmsched: node or npm missing; installing Debian's nodejs and npm" >&2
        if [ "$(id -u)" != 0 ]; then
            if command -v sudo >/dev/null 2>&1; then
                sudo="sudo"
            else
                echo "lmsched: not root and no sudo; install nodejs and npm for tests/http" >&2
                return 1
            fi
        fi
        $sudo apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
                nodejs npm >/dev/null || return 1
    fi
    # Every package of the lockfile must be installed at its version (one
    # for another OS or CPU may be missing); otherwise install from the
    # lockfile again.
    if ! node -e '
const fs = require("fs"), dir = process.argv[1];
const want = JSON.parse(fs.readFileSync(dir + "/package-lock.json")).packages;
for (const [k, v] of Object.entries(want)) {
    if (k === "") continue;
    let got = null;
    try { got = JSON.parse(fs.readFileSync(dir + "/" + k + "/package.json")).version; } catch {}
    if (got !== v.version && !(got === null && (v.os || v.cpu))) process.exit(1);
}' "$dir" 2>/dev/null; then
        echo "lmsched: npm ci in tests/http/node (node $(node --version))" >&2
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2) || return 1
    fi
}

# clang with libFuzzer, for scripts/fuzz. Debian bookworm's clang is 14; its
# libFuzzer and sanitizer runtimes are in libclang-rt-<major>-dev. The check
# links a tiny fuzz target, which is what actually needs to work.
lmsched_install_fuzz_deps() {
    local probe='int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { return 0; }'
    if command -v clang >/dev/null 2>&1 &&
        echo "$probe" | clang -x c -fsanitize=fuzzer,address,undefined -o /dev/null - >/dev/null 2>&1; then
        return 0
    fi
    local major=14 sudo=""
    if command -v clang >/dev/null 2>&1; then
        major=$(clang -dumpversion | cut -d. -f1)
    fi
    echo "lmsched: clang with libFuzzer missing; installing clang libclang-rt-$major-dev" >&2
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo="sudo"
        else
            echo "lmsched: not root and no sudo; install: clang libclang-rt-$major-dev" >&2
            return 1
        fi
    fi
    $sudo apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
            clang "libclang-rt-$major-dev" >/dev/null || return 1
    if ! echo "$probe" | clang -x c -fsanitize=fuzzer,address,undefined -o /dev/null - >/dev/null 2>&1; then
        echo "lmsched: clang still cannot link a libFuzzer target" >&2
        return 1
    fi
}
