#!/usr/bin/env bash
# A launcher like a pyenv shim or `uv run`: some shell work first, then exec the
# interpreter (same pid, new binary). PYTHON names the interpreter.
set -e
# the command's own clock, the same for every profiler: start here, end in the program
[ -z "${COVERAGE_CLOCK:-}" ] || echo "$EPOCHREALTIME" > "$COVERAGE_CLOCK"
for i in $(seq 1 300); do n=$((i * 7 % 13)); done
exec "${PYTHON:-python3}" "$@"
