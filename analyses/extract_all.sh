#!/usr/bin/env bash
# Extract the feature caches of every study at low priority, in passes: trained models and baselines
# of every study first, then the controls of seed 0 of every study, then of 5 seeds, then of all (up to 20), so a
# partial run leaves complete levels. Resumable: a rerun skips the samples already stored.
# Log: analyses/results/extract.log (git-ignored); costs: analyses/results/<study>/extraction_times.csv.
#   bash analyses/extract_all.sh            # from the repository root
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
LOG=analyses/results/extract.log
for seeds in 0 1 5 20; do
    for study in interatomic_potentials antibody_models; do
        echo "== $(date -u +%FT%TZ) $study, controls of the first $seeds seed(s)" >> "$LOG"
        nice -n "${NICE:-15}" "$PY" -W ignore -m "analyses.$study" --extract-only --control-seeds "$seeds" >> "$LOG" 2>&1
    done
done
echo "== $(date -u +%FT%TZ) done" >> "$LOG"
