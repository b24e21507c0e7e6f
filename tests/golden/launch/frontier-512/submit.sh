#!/bin/bash
# Submits runs/frontier-512 on `frontier`: 512 node(s) x 8 rank(s), 3 segment(s) of 12:00:00.
# Each segment starts when the one before it ends (afterany) and resumes from the newest
# checkpoint; job ids are appended to jobs.txt.
set -euo pipefail
cd /work/project/runs/frontier-512/launch/1
dep=()
for seg in $(seq 1 3); do
  id=$(sbatch --parsable ${dep[@]+"${dep[@]}"} job.sbatch)
  id=${id%%;*}
  echo "$id" >> jobs.txt
  echo "segment $seg/3: job $id"
  dep=(--dependency=afterany:$id)
done
