#!/usr/bin/env bash
# Extract the feature caches of every study, one study after the other, at low priority.
# Resumable: a rerun skips the samples already stored. Log: analyses/results/extract.log (git-ignored).
#   bash analyses/extract_all.sh            # from the repository root
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOG=analyses/results/extract.log
for study in interatomic_potentials antibody_models; do
    echo "== $(date -u +%FT%TZ) $study" >> "$LOG"
    nice -n "${NICE:-15}" "$PY" -W ignore -m "analyses.$study" --extract-only >> "$LOG" 2>&1
done
echo "== $(date -u +%FT%TZ) done" >> "$LOG"
