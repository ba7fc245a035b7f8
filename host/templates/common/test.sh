#!/bin/sh
# Runs the built component's `greet` offline (`wasaga plugin run`, on a scratch store
# holding test-records.json: Ada greeted 41 times), and checks what it answers and
# writes. WASAGA names the wasaga binary when it is not on the PATH.
set -eu
out=$("${WASAGA:-wasaga}" plugin run {{wasm}} greet '{"name": "Ada"}' --records test-records.json)
expected='output  {"greeting":"Hello, Ada!","count":42}
write   greeted/Ada = 42 (version 2)'
if [ "$out" != "$expected" ]; then
    printf 'greet answered:\n%s\nexpected:\n%s\n' "$out" "$expected" >&2
    exit 1
fi
echo "ok: greet counted Ada's 42nd greeting"
