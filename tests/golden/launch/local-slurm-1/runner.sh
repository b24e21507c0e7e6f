#!/bin/bash
# One rank of the job: the launcher starts one of these per rank. Per-rank settings go here.
# Every segment resumes from the run's newest complete checkpoint (or starts it).
exec /opt/muninn/bin/muninn train "$1" --resume auto
