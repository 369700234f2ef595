#!/usr/bin/env bash
# install_test - an agent built the documented way runs (issue 9, item 5).
#
# Installs the build tree into a fresh prefix (cmake --install), compiles the
# fanout.c example of docs/agentlib.md exactly as that page says (pkg-config,
# no extra flags), and runs it with no LD_LIBRARY_PATH against lmsim and a
# real `lmsched serve`: every question must be answered. Also checks that the
# program found the library in the prefix (not in the build tree). The
# page's other examples are built the same way and run too: stream.c must
# stream an answer, tools.c must make a whole tool round trip.
#
# In a sanitizer build (third argument: the sanitizers) the examples get the
# same -fsanitize, the one flag the page does not have: an instrumented
# library needs its runtime linked into the program first.
set -euo pipefail
src=${1:?usage: install_test.sh SOURCE_DIR BUILD_DIR [SANITIZERS]}
build=${2:?usage: install_test.sh SOURCE_DIR BUILD_DIR [SANITIZERS]}
sanitize=${3:-}
san_flags=()
[ -n "$sanitize" ] && san_flags=(-fsanitize="$sanitize")
bin="$build/bin"

tmp=$(mktemp -d /tmp/lmsched-install-test.XXXXXX)
sim_pid="" daemon_pid=""
cleanup() {
    [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
    [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null && wait "$sim_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

cmake --install "$build" --prefix "$tmp/prefix" >"$tmp/install.log" 2>&1 || {
    cat "$tmp/install.log"
    echo "FAIL: cmake --install"
    exit 1
}

# The examples, cut out of the page so the page cannot drift from what works.
export PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig"
for ex in fanout stream tools; do
    awk -v tag="<!-- example: $ex.c -->" '$0 == tag { grab = 1; next }
         grab && /^```c$/ { inside = 1; next }
         inside && /^```$/ { exit }
         inside { print }' "$src/docs/agentlib.md" >"$tmp/$ex.c"
    [ -s "$tmp/$ex.c" ] || {
        echo "FAIL: no $ex.c example in docs/agentlib.md"
        exit 1
    }
    cc -Wall -Wextra -Werror ${san_flags[@]+"${san_flags[@]}"} "$tmp/$ex.c" \
        $(pkg-config --cflags --libs lmsched-agent) -lpthread -o "$tmp/$ex"
done

"$bin/lmsim" --time-scale 50 --port-file "$tmp/port" --log-level warn >"$tmp/lmsim.log" 2>&1 &
sim_pid=$!
for _ in $(seq 100); do [ -s "$tmp/port" ] && break; sleep 0.05; done
[ -s "$tmp/port" ] || { cat "$tmp/lmsim.log"; echo "FAIL: lmsim did not start"; exit 1; }
export LMSCHED_URL="ipc://$tmp/d.sock"
"$bin/lmsched" serve --listen "$LMSCHED_URL" --backend "http://127.0.0.1:$(cat "$tmp/port")" \
    --log-level warn >"$tmp/daemon.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do
    "$bin/lmsched" status --url "$LMSCHED_URL" --timeout 200 >/dev/null 2>&1 && break
    sleep 0.05
done

unset LD_LIBRARY_PATH
out=$("$tmp/fanout" "What is a prefix cache?" "Why share one server?" "What is a KV cache?") || {
    echo "$out"
    cat "$tmp/daemon.log"
    echo "FAIL: the example agent failed"
    exit 1
}
echo "$out"
echo "$out" | grep -qx "3 of 3 answered" || { echo "FAIL: not every question answered"; exit 1; }

# stream.c: the answer streamed, then its summary line.
out=$("$tmp/stream" "Tell me a story." 2>"$tmp/stream.err") || {
    echo "$out"
    cat "$tmp/stream.err" "$tmp/daemon.log"
    echo "FAIL: the stream example failed"
    exit 1
}
echo "$out"
echo "$out" | grep -Eq '^\[[0-9]+ tokens, [0-9]+ characters; first token' ||
    { echo "FAIL: the stream example printed no summary"; exit 1; }
[ "$(echo "$out" | head -n 1 | wc -c)" -gt 20 ] ||
    { echo "FAIL: the stream example printed no answer"; exit 1; }

# tools.c: the model calls the tool, gets its result, answers with it.
out=$("$tmp/tools") || {
    echo "$out"
    cat "$tmp/daemon.log"
    echo "FAIL: the tools example failed"
    exit 1
}
echo "$out"
echo "$out" | grep -q '^tool: get_weather({"city":' ||
    { echo "FAIL: the tools example made no tool call"; exit 1; }
echo "$out" | grep -q '^answer: Tool result: {"temp_c":18' ||
    { echo "FAIL: the tools example got no answer from the tool's result"; exit 1; }

# It must have loaded the installed library, found through the rpath.
lib=$(LD_TRACE_LOADED_OBJECTS=1 "$tmp/fanout" | awk '/liblmsched-agent/ { print $3 }')
case "$lib" in
"$tmp/prefix/"*) echo "ok: liblmsched-agent from $lib" ;;
*)
    echo "FAIL: liblmsched-agent resolved to '$lib', not the installed prefix"
    exit 1
    ;;
esac
