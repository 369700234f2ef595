#!/usr/bin/env bash
# setup_lock_test - `scripts/llama-server setup` run twice at once on a
# chroot whose last setup was killed halfway (issue 9, item 2).
#
# Works on a copy of the shared chroot: the packages marker removed and one
# package left half-configured, as a setup killed inside dpkg leaves them.
# Both setups must succeed (the second waits for the first's lock instead
# of failing on dpkg's), and the chroot must come out repaired: dpkg clean,
# the marker back. Skips (exit 77) where there is no chroot to copy.
set -euo pipefail
script=${1:?usage: setup_lock_test.sh path/to/scripts/llama-server}
src=${LMSCHED_LLAMA_ROOT:-/var/cache/lmsched/sid}

if [ "$(id -u)" != 0 ]; then
    echo "skipped: not root (the chroot needs root)"
    exit 77
fi
if [ ! -f "$src/.lmsched-packages" ] || [ ! -x "$src/usr/bin/llama-server" ]; then
    echo "skipped: no chroot at $src (scripts/llama-server setup makes it)"
    exit 77
fi

tmp=$(mktemp -d /var/tmp/lmsched-setup-test.XXXXXX)
cleanup() {
    mountpoint -q "$tmp/sid/proc" 2>/dev/null && umount -l "$tmp/sid/proc"
    rm -rf --one-file-system "$tmp"
}
trap cleanup EXIT
cp -a "$src" "$tmp/sid"
root="$tmp/sid"

# The half-finished state: no marker, and a package dpkg had unpacked but
# not configured when it was killed (libggml0: no maintainer script, so
# finishing it is quick).
rm -f "$root/.lmsched-packages"
sed -i '/^Package: libggml0$/,/^$/ s/^Status: install ok installed$/Status: install ok half-configured/' \
    "$root/var/lib/dpkg/status"
grep -A3 '^Package: libggml0$' "$root/var/lib/dpkg/status" | grep -q 'half-configured' || {
    echo "FAIL: could not prepare the half-configured package"
    exit 1
}

LMSCHED_LLAMA_ROOT="$root" "$script" setup >"$tmp/a.log" 2>&1 &
a=$!
LMSCHED_LLAMA_ROOT="$root" "$script" setup >"$tmp/b.log" 2>&1 &
b=$!
rca=0 rcb=0
wait $a || rca=$?
wait $b || rcb=$?
echo "--- setup A (exit $rca)"
cat "$tmp/a.log"
echo "--- setup B (exit $rcb)"
cat "$tmp/b.log"

fail=0
if [ $rca != 0 ] || [ $rcb != 0 ]; then
    echo "FAIL: a concurrent setup failed"
    fail=1
fi
if [ "$(cat "$root/.lmsched-packages" 2>/dev/null)" = "" ]; then
    echo "FAIL: the packages marker was not written back"
    fail=1
fi
if grep -Eq '^Status: .* (half-installed|unpacked|half-configured)$' "$root/var/lib/dpkg/status"; then
    echo "FAIL: dpkg still has an unfinished package"
    fail=1
fi
if ! grep -q 'waiting for another setup' "$tmp/a.log" "$tmp/b.log"; then
    # Not an error by itself (one may have finished before the other
    # started), but say it, since then the lock was not exercised.
    echo "note: the two setups did not overlap"
fi
[ $fail = 0 ] && echo "ok: both setups succeeded and the chroot was repaired"
exit $fail
