# shellcheck shell=bash
# Shared by .ci/run and scripts/check_transformers.sh (source it; it defines functions only).
#
#   fresh_venv DIR                 new venv at DIR (no system site-packages), activated; prints the
#                                  packages it starts with ("packages before install: N")
#   readme_test_command README [ANCHOR]  the README's test command: the first line of the ```bash
#                                  block right after the line holding ANCHOR (default: the
#                                  "<!-- ci:test-command -->" marker)
#   install_part COMMAND           COMMAND without its trailing "&& python -m pytest ..." part
#   transformers_floor PYPROJECT   X of the "transformers>=X,<Y" pin, as X.Y.Z (5.20 -> 5.20.0)
#   run_logged LOG COMMAND         runs COMMAND with bash -c, output to the terminal and LOG;
#                                  sets RUN_RC to its exit code (never exits by itself)
#   pytest_summary LOG             pytest's closing line in LOG ("12 passed, 1 skipped in 3.4s"), or
#                                  LOG's last line when pytest did not get to print one
#   pytest_verdict RC LOG          PASS / FAIL text for a pytest exit code; exit 5 (no test ran) is a FAIL
#   transformers_version           the transformers version in the active environment
#   newest_transformers            the newest transformers release the package index offers
#   install_transformers VERSION   pip install transformers==VERSION; when the index lacks one of that
#                                  release's own dependencies, installs it --no-deps and says which
#                                  (sets INSTALL_NOTE, "" when the normal install worked)
#   fmt_seconds N                  "N s (XmYYs)"

fresh_venv() {
    local dir=$1
    "${PYTHON:-python}" -m venv "$dir"
    if ! grep -q '^include-system-site-packages = false' "$dir/pyvenv.cfg"; then
        echo "ERROR: $dir/pyvenv.cfg does not say include-system-site-packages = false" >&2
        return 1
    fi
    # activate reads unset variables (PS1, ...); keep -u off while it runs
    set +u
    # shellcheck disable=SC1091
    source "$dir/bin/activate"
    set -u
    hash -r
    local pkgs
    pkgs=$(python -m pip list --format=freeze 2>/dev/null)
    echo "venv: $VIRTUAL_ENV (python $(python -c 'import platform; print(platform.python_version())'))"
    echo "packages before install: $(printf '%s\n' "$pkgs" | grep -c .) ($(printf '%s\n' "$pkgs" | tr '\n' ' '))"
}

readme_test_command() {
    local readme=$1 anchor=${2:-<!-- ci:test-command -->} cmd
    cmd=$(awk -v anchor="$anchor" '
        !marker && index($0, anchor) { marker = 1; next }
        marker && !inblock && /^```bash[[:space:]]*$/ { inblock = 1; next }
        marker && !inblock && NF { exit 1 }       # something else between marker and block
        inblock { print; exit 0 }
    ' "$readme") || true
    if [[ -z "$cmd" || "$cmd" == '```'* ]]; then
        echo "ERROR: no test command in $readme: expected a line with '$anchor' followed by a \`\`\`bash block" >&2
        return 1
    fi
    printf '%s\n' "$cmd"
}

install_part() {
    local cmd=$1 install
    install=${cmd% && python -m pytest*}
    if [[ "$install" == "$cmd" || -z "$install" ]]; then
        echo "ERROR: the test command does not end with '&& python -m pytest ...': $cmd" >&2
        return 1
    fi
    printf '%s\n' "$install"
}

transformers_floor() {
    local pyproject=$1 floor
    floor=$(grep -oE '"transformers>=[0-9][0-9.]*,<[0-9][0-9.]*"' "$pyproject" | head -n1 | sed -E 's/^"transformers>=([0-9.]+),.*/\1/') || true
    if [[ -z "$floor" ]]; then
        echo "ERROR: no \"transformers>=X,<Y\" pin in $pyproject" >&2
        return 1
    fi
    while [[ $(tr -cd . <<<"$floor" | wc -c) -lt 2 ]]; do floor+=".0"; done
    printf '%s\n' "$floor"
}

run_logged() {
    local log=$1 cmd=$2
    echo "+ $cmd"
    # the exit code goes through a file: right whatever errexit / pipefail the caller has set
    { local rc=0; bash -c "$cmd" || rc=$?; echo "$rc" >"$log.rc"; } 2>&1 | tee "$log" || true
    RUN_RC=$(cat "$log.rc" 2>/dev/null || echo 1)
}

pytest_summary() {
    local line
    line=$(grep -E '(passed|failed|errors?|skipped|deselected|xfailed|xpassed|no tests ran).* in [0-9.]+s' "$1" | tail -n1 \
        | sed -E 's/^=+ //; s/ =+$//') || true
    if [[ -z "$line" ]]; then
        line="no pytest summary line; last output: $(grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -n1 | cut -c1-200)"
    fi
    printf '%s\n' "$line"
}

pytest_verdict() {
    case $1 in
        0) echo "PASS" ;;
        5) echo "FAIL (pytest exit 5: no test was collected or run)" ;;
        *) echo "FAIL (exit $1)" ;;
    esac
}

transformers_version() {
    python -c 'import transformers; print(transformers.__version__)' 2>/dev/null || echo "not installed"
}

newest_transformers() {
    "${PYTHON:-python}" -m pip index versions transformers 2>/dev/null | sed -n 's/^transformers (\([0-9][0-9.]*\)).*/\1/p' | head -n1
}

install_transformers() {
    local version=$1
    INSTALL_NOTE=""
    if pip install -q "transformers==$version"; then return 0; fi
    # e.g. 5.25.0 requires kernels>=0.19.1,<0.20, absent from a registry that stops at 0.17.2: the release's
    # own code can still be tested, without that dependency (the library turns Hub kernels off when the
    # `kernels` package is not usable: fspad_hf.compat.load_kwargs)
    echo "transformers==$version: its dependencies cannot all be installed from this index; installing it --no-deps" >&2
    pip install -q --no-deps "transformers==$version" || return 1
    INSTALL_NOTE="--no-deps: $(pip check 2>/dev/null | grep -E "^transformers $version requires" | sed -E 's/^transformers [^ ]+ requires //; s/, which is not installed\.?//' | paste -sd, -)"
    INSTALL_NOTE=${INSTALL_NOTE%: }
    echo "transformers==$version installed ($INSTALL_NOTE)" >&2
}

fmt_seconds() {
    printf '%d s (%dm%02ds)\n' "$1" $(($1 / 60)) $(($1 % 60))
}
