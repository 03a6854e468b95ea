#!/usr/bin/env bash
# Try one transformers release against a committed state of this repo:
#
#   scripts/check_transformers.sh VERSION [REF]      (REF: any commit-ish, default HEAD)
#
# Clones the repo at REF into a temp dir (the work tree's uncommitted changes are not tested), builds
# a fresh venv there, runs the README's install command inside the clone, then
# `pip install transformers==VERSION` and `python -m pytest -q -m core`. Prints one line
#   transformers VERSION @ <short sha>: <pytest summary line>
# and appends it to benchmarks/results/transformers-versions.txt. Exits non-zero when the install
# or any core test fails, or when pytest ran no test.
set -euo pipefail
usage() { echo "usage: $0 VERSION [REF]   e.g. $0 5.25.0" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 && -n "$1" ]] || usage
version=$1
ref=${2:-HEAD}

repo=$(cd "$(dirname "$0")/.." && pwd)
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# shellcheck source=scripts/fresh_venv.sh
source "$repo/scripts/fresh_venv.sh"
results=$repo/benchmarks/results/transformers-versions.txt

sha=$(git -C "$repo" rev-parse --verify --quiet "${ref}^{commit}") || { echo "ERROR: unknown commit: $ref" >&2; exit 2; }
short=$(git -C "$repo" rev-parse --short "$sha")

tmp=$(mktemp -d "${TMPDIR:-/tmp}/fspad-tf.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

echo "=== transformers $version against $ref ($short), clone in $tmp/src ==="
git clone -q "$repo" "$tmp/src"
git -C "$tmp/src" checkout -q --detach "$sha"

# The install command of the tested commit, from its own README (never the work tree's: the install
# may have changed since). Commits older than the ci:test-command marker: the block under the
# "Install and run the tests" line.
if test_cmd=$(readme_test_command "$tmp/src/README.md" 2>/dev/null); then
    echo "README command from $short:README.md"
else
    test_cmd=$(readme_test_command "$tmp/src/README.md" "Install and run the tests")
    echo "README command from $short:README.md (no ci:test-command marker there: block under 'Install and run the tests')"
fi
install_cmd=$(install_part "$test_cmd")

record() {
    local line="transformers $version @ $short: $1"
    mkdir -p "$(dirname "$results")"
    echo "$line" >>"$results"
    echo
    echo "$line"
}

start=$SECONDS
fresh_venv "$tmp/venv"
cd "$tmp/src"
run_logged "$tmp/install.log" "$install_cmd"
if [[ $RUN_RC -ne 0 ]]; then
    record "install failed (exit $RUN_RC)"
    exit 1
fi
install_transformers "$version" || { record "pip install transformers==$version failed"; exit 1; }
got=$(transformers_version)
echo "transformers installed: $got"
if [[ "$got" != "$version" ]]; then
    record "asked for $version, got $got"
    exit 1
fi

run_logged "$tmp/pytest.log" "python -m pytest -q -m core"
summary=$(pytest_summary "$tmp/pytest.log")
case $RUN_RC in
    0) ;;
    5) summary+=" [pytest exit 5: no test ran]" ;;
    *) summary+=" [pytest exit $RUN_RC]" ;;
esac
echo "wall time: $(fmt_seconds $((SECONDS - start)))"
[[ -n $INSTALL_NOTE ]] && summary+=" [$INSTALL_NOTE]"
record "$summary"
exit "$RUN_RC"
