#!/bin/sh
# tests/python/run_pytest.sh TEST_FILE [pytest args...]
# Runs one file of the Python package's tests (bindings/python) with a
# python3 that has pytest: $LMSCHED_PYTHON, else python3 on PATH, else
# Debian's /usr/bin/python3 (python3-pytest, which scripts/test installs).
# ctest sets LMSCHED_BIN_DIR (lmsim, lmsched) and LMSCHED_LIB (the agent
# library). Exit 77 (ctest: skipped) when no python3 with pytest is found.
here=$(cd "$(dirname "$0")" && pwd)
# No __pycache__ in the source tree.
export PYTHONDONTWRITEBYTECODE=1
# A library built with sanitizers (scripts/test --sanitize) needs their
# runtime loaded first into python3, which is not built with them; Python's
# own allocations are not ours to report, so leak checking is off. Python
# cannot run a ThreadSanitizer library at all.
if [ -n "${LMSCHED_LIB:-}" ] && command -v ldd >/dev/null 2>&1; then
    rt=$(ldd "$LMSCHED_LIB" 2>/dev/null | awk '/lib(asan|tsan)\.so/ { print $3; exit }')
    case "$rt" in
    *tsan*)
        echo "skipped: $LMSCHED_LIB is built with ThreadSanitizer, which python3 cannot load"
        exit 77
        ;;
    *asan*)
        export LD_PRELOAD="$rt${LD_PRELOAD:+:$LD_PRELOAD}"
        export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
        ;;
    esac
fi
for py in "${LMSCHED_PYTHON:-}" python3 /usr/bin/python3; do
    [ -n "$py" ] || continue
    command -v "$py" >/dev/null 2>&1 || continue
    if "$py" -c 'import pytest' >/dev/null 2>&1; then
        cd "$here" || exit 1
        # No cache in the source tree; one file per ctest entry.
        exec "$py" -m pytest -p no:cacheprovider -v "$@"
    fi
done
echo "skipped: no python3 with pytest (apt-get install python3-pytest, or set LMSCHED_PYTHON)"
exit 77
