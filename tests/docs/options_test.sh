#!/usr/bin/env bash
# options_test - the option lists of the docs are the option tables' own
# (issue 10): docs/cli.md's `lmsched serve` tables must be what
# `lmsched serve --help-markdown` prints, docs/simulator.md's what
# `lmsim --help-markdown` prints, between their <!-- options:NAME:begin -->
# and <!-- options:NAME:end --> markers. With --update it rewrites them.
set -euo pipefail
update=0
if [ "${1:-}" = --update ]; then
    update=1
    shift
fi
src=${1:?usage: options_test.sh [--update] SOURCE_DIR BUILD_DIR}
build=${2:?usage: options_test.sh [--update] SOURCE_DIR BUILD_DIR}
fail=0

# check DOC NAME COMMAND...: the block NAME of DOC against COMMAND's output.
check() {
    local doc=$1 name=$2
    shift 2
    local begin="<!-- options:$name:begin -->" end="<!-- options:$name:end -->"
    local want got nb ne
    if ! want=$("$@"); then
        echo "FAIL: $* failed"
        fail=1
        return
    fi
    if [ -z "$want" ]; then
        echo "FAIL: $* printed nothing"
        fail=1
        return
    fi
    nb=$(grep -cxF -- "$begin" "$doc" || true)
    ne=$(grep -cxF -- "$end" "$doc" || true)
    if [ "$nb" != 1 ] || [ "$ne" != 1 ]; then
        echo "FAIL: $doc needs exactly one '$begin' and one '$end' line"
        fail=1
        return
    fi
    got=$(awk -v b="$begin" -v e="$end" '$0 == e { inside = 0 } inside { print } $0 == b { inside = 1 }' "$doc")
    [ "$got" = "$want" ] && return
    if [ $update = 1 ]; then
        local tmp
        tmp=$(mktemp)
        printf '%s\n' "$want" >"$tmp.new"
        awk -v b="$begin" -v e="$end" -v f="$tmp.new" '
            $0 == e { inside = 0 }
            !inside { print }
            $0 == b { inside = 1; while ((getline line < f) > 0) print line }' "$doc" >"$tmp"
        mv "$tmp" "$doc"
        rm -f "$tmp.new"
        echo "updated: $doc ($name)"
        return
    fi
    echo "FAIL: $doc ($name) differs from '$*' (- docs, + generated);" \
        "run tests/docs/options_test.sh --update SOURCE_DIR BUILD_DIR"
    diff <(printf '%s\n' "$got") <(printf '%s\n' "$want") | sed -n '1,40p' || true
    fail=1
}

check "$src/docs/cli.md" serve "$build/bin/lmsched" serve --help-markdown
check "$src/docs/simulator.md" lmsim "$build/bin/lmsim" --help-markdown
[ $fail = 0 ] && echo "ok: the option tables of docs/cli.md and docs/simulator.md are generated ones"
exit $fail
