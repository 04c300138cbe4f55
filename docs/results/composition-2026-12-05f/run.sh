#!/usr/bin/env bash
# the composition table's three runs: composition-2026-12-05e's commands (the code now has the native
# linears and the transposed-key attention), written into this folder; from the repository root
exec "$(dirname "$0")/../composition-2026-12-05e/run.sh" docs/results/composition-2026-12-05f
