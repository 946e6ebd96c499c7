#!/usr/bin/env bash
# Every `docs/ARCHITECTURE.md#anchor` cited in the repository names a heading that exists there
# (GitHub's anchors: lower case, punctuation dropped, spaces as dashes). Part of `make lint`.
set -euo pipefail
cd "$(dirname "$0")/.."
doc=docs/ARCHITECTURE.md
[ -f "$doc" ] || { echo "check-doc-links: $doc is missing" >&2; exit 1; }
anchors="$(sed -n 's/^#\{1,6\} \(.*\)$/\1/p' "$doc" | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9 _-]//g; s/ /-/g')"
bad=0
while IFS=: read -r file line ref; do
  anchor="${ref#*#}"
  if ! grep -qxF -- "$anchor" <<<"$anchors"; then
    echo "$file:$line: $ref names no heading of $doc" >&2
    bad=1
  fi
done < <(git grep -noE 'docs/ARCHITECTURE\.md#[a-z0-9_-]+' -- ':!docs/ARCHITECTURE.md' ':!scripts/check-doc-links.sh')
exit $bad
