#!/usr/bin/env bash
# the composition table's three runs: composition-2026-12-05e's commands (the code now has the AMX linears'
# streaming 32-row passes, docs/results/verify-2026-12-06b), written into this folder; from the repository root
exec "$(dirname "$0")/../composition-2026-12-05e/run.sh" docs/results/composition-2026-12-06b
