#!/usr/bin/env bash
# readme_test - the README stays the map of the project (issue 9, item 7):
# it links every page under docs/, names every program build/bin holds, keeps
# the two commands at its top, and its status says nothing stale.
set -euo pipefail
src=${1:?usage: readme_test.sh SOURCE_DIR BUILD_DIR}
build=${2:?usage: readme_test.sh SOURCE_DIR BUILD_DIR}
readme="$src/README.md"
fail=0

for page in "$src"/docs/*.md; do
    name=$(basename "$page")
    if ! grep -q "(docs/$name)" "$readme"; then
        echo "FAIL: README does not link docs/$name"
        fail=1
    fi
done

for prog in "$build"/bin/*; do
    [ -x "$prog" ] || continue
    name=$(basename "$prog")
    if ! grep -q "^| \`$name\` |" "$readme"; then
        echo "FAIL: README's table of build/bin does not list $name"
        fail=1
    fi
done

# The two commands a new user runs first, exactly.
if ! grep -qx 'scripts/demo    # install deps if missing, build, run 6 agents through lmsched, print status' "$readme" ||
    ! grep -qx 'scripts/test    # install deps if missing, build, run the whole test suite (ctest)' "$readme"; then
    echo "FAIL: the two commands at the top of README changed"
    fail=1
fi
if grep -q 'come next' "$readme"; then
    echo "FAIL: README's status still promises what is built"
    fail=1
fi
[ $fail = 0 ] && echo "ok: README links $(ls "$src"/docs/*.md | wc -l) pages and lists $(ls "$build"/bin | wc -l) programs"
exit $fail
