#!/usr/bin/env bash
# Contract safety: fail when proto/ (as it is in the working tree) breaks the API of the previous
# commit. Runs `buf breaking` with the rules of buf.yaml (FILE: wire and generated-code
# compatibility), fully offline: the base proto/ is read with `git archive` into a temporary
# directory (no buf git input, no network, nothing in the checkout changes).
#
#   scripts/buf_breaking.sh            # against HEAD~1 (the previous commit of main)
#   scripts/buf_breaking.sh origin/main  # or any commit-ish, e.g. a PR's merge base
#   BUF_BREAKING_AGAINST=HEAD scripts/buf_breaking.sh   # only your uncommitted changes
#
# Exit 0: compatible, or nothing to compare against (first commit; no proto/ at the base).
# Exit 1: breaking changes (listed by buf), or the base cannot be read. Missing history (not a
# git checkout, or a shallow clone whose base cannot be fetched) is an error under CI=true and a
# skip otherwise. In a shallow clone the script first tries `git fetch --deepen` (CI: clone with
# fetch-depth >= 2 to avoid that).
set -euo pipefail
cd "$(dirname "$0")/.."

BUF=${BUF:-.venv/bin/buf}
AGAINST=${1:-${BUF_BREAKING_AGAINST:-HEAD~1}}
PROTO_DIR=proto

say() { printf 'buf-breaking: %s\n' "$*"; }
# A base we cannot read: a failure in CI (the check must run there), a skip on a workstation.
no_base() {
  if [[ "${CI:-}" == "true" ]]; then
    say "ERROR: $* (CI=true: the contract check cannot be skipped)" >&2
    exit 1
  fi
  say "SKIPPED: $*"
  exit 0
}

if [[ ! -x "$BUF" ]]; then
  say "ERROR: $BUF not found (make setup installs buf-bin into .venv; or set BUF=/path/to/buf)" >&2
  exit 1
fi
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  no_base "not a git checkout: no previous commit to compare proto/ with"
fi
if ! git rev-parse --verify --quiet HEAD >/dev/null; then
  say "no commit yet: nothing to compare proto/ with"
  exit 0
fi

base=$(git rev-parse --verify --quiet "${AGAINST}^{commit}" || true)
if [[ -z "$base" && "$(git rev-parse --is-shallow-repository)" == "true" ]]; then
  # A shallow CI clone lacks the parent; fetch just enough history (objects only).
  say "shallow clone: fetching more history to reach $AGAINST"
  git fetch --quiet --deepen=1 >/dev/null 2>&1 || true
  base=$(git rev-parse --verify --quiet "${AGAINST}^{commit}" || true)
  if [[ -z "$base" ]]; then
    no_base "shallow clone without $AGAINST (clone with fetch-depth >= 2 or run 'git fetch --deepen=1')"
  fi
fi
if [[ -z "$base" ]]; then
  if [[ "$AGAINST" == "HEAD~1" ]] && [[ -z "$(git rev-list --parents -n 1 HEAD | cut -s -d' ' -f2)" ]]; then
    say "HEAD is the first commit: no previous proto/ to compare with"
    exit 0
  fi
  say "ERROR: '$AGAINST' is not a commit in this repository" >&2
  exit 1
fi
short=$(git rev-parse --short "$base")

if [[ -z "$(git ls-tree -r --name-only "$base" -- "$PROTO_DIR" | grep '\.proto$' || true)" ]]; then
  say "no $PROTO_DIR/*.proto at $AGAINST ($short): the API is new, nothing can break"
  exit 0
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/buf-breaking.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
git archive --format=tar "$base" -- "$PROTO_DIR" | tar -x -C "$tmp"

# Compare module roots: the working tree's proto/ with the base's proto/, so file paths
# (smartdispatch/v1/...) line up whatever buf.yaml looked like at the base. The rules are
# buf.yaml's `breaking` section.
say "proto/ (working tree) against $AGAINST ($short)"
if "$BUF" breaking "$PROTO_DIR" --against "$tmp/$PROTO_DIR" --config buf.yaml --error-format text; then
  say "OK: no breaking changes"
else
  status=$?
  if [[ $status -eq 100 ]]; then  # buf's exit code for "found breaking changes"
    say "FAILED: the changes above break clients of $AGAINST ($short)." >&2
    say "Add new fields/RPCs instead of changing or removing existing ones; for a deliberate" >&2
    say "break, introduce a new package version (smartdispatch.v2)." >&2
  fi
  exit 1
fi
