#!/bin/bash
# Submits runs/local-slurm-1 on `local-slurm`: 1 node(s) x 2 rank(s), 1 segment(s) of 00:30:00.
# Each segment starts when the one before it ends (afterany) and resumes from the newest
# checkpoint; job ids are appended to jobs.txt.
set -euo pipefail
cd /work/project/runs/local-slurm-1/launch/1
dep=()
for seg in $(seq 1 1); do
  id=$(sbatch --parsable ${dep[@]+"${dep[@]}"} job.sbatch)
  id=${id%%;*}
  echo "$id" >> jobs.txt
  echo "segment $seg/1: job $id"
  dep=(--dependency=afterany:$id)
done
