#!/usr/bin/env bash
# The one command that runs every test of tollgate, on a fresh machine as on CI:
#
#   scripts/test.sh                 # the whole workspace
#   scripts/test.sh -p tollgate     # extra arguments go to `cargo test` (-p: that package only)
#
# It installs what the tests need that cargo does not (schemathesis, openapi-spec-validator,
# prometheus_client, stripe, fal-client and focus-validator, in a Python virtualenv at
# target/test-venv, at the exact versions of scripts/requirements-test.txt; an existing venv
# that already has them is reused; `pdftotext`, from Debian's poppler-utils, with apt-get when
# it is not on the PATH, to read back the text of invoice PDFs; and Debian's chromium and
# chromium-driver, for the dashboard's browser tests), tells the tests where those tools are
# (TOLLGATE_SCHEMATHESIS, TOLLGATE_OPENAPI_SPEC_VALIDATOR, TOLLGATE_PYTHON,
# TOLLGATE_FOCUS_VALIDATOR, TOLLGATE_PDFTOTEXT, TOLLGATE_CHROMIUM, TOLLGATE_CHROMEDRIVER), then runs
# `cargo test --workspace`. If a tool cannot be installed it stops and says which:
# no test is ever skipped because a tool is missing.
#
# Needs the Rust toolchain and python3 with venv and pip (Debian: python3-venv), access to
# PyPI the first time, and, where pdftotext or chromium is missing, apt-get run as root with
# access to Debian's packages. PostgreSQL is optional: with TOLLGATE_TEST_POSTGRES_URL set (for example
# postgres://postgres@127.0.0.1:5432/test) the PostgreSQL tests run too; without it they say
# they were skipped.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

say() { printf '==> test.sh: %s\n' "$*"; }
fail() {
  printf 'test.sh: %s\n' "$*" >&2
  exit 1
}

# --- Python tools: schemathesis, openapi-spec-validator -------------------------------------
venv="$root/target/test-venv"
requirements="$root/scripts/requirements-test.txt"

# True when the venv's python runs and has every pinned `name==version` installed.
venv_has_pins() {
  [ -x "$venv/bin/python" ] || return 1
  "$venv/bin/python" - "$requirements" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import PackageNotFoundError, version

for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, _, pinned = line.partition("==")
    try:
        if version(name) != pinned:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
}

if venv_has_pins; then
  say "reusing the Python tools in ${venv#"$root"/} (the versions of scripts/requirements-test.txt)"
else
  command -v python3 >/dev/null 2>&1 ||
    fail "python3 is not installed: it is needed to install schemathesis (the API's property-based test)"
  say "creating the Python virtualenv ${venv#"$root"/}"
  python3 -m venv --clear "$venv" ||
    fail "could not create a Python virtualenv at $venv with \`python3 -m venv\` (on Debian: apt-get install python3-venv)"
  say "installing $(grep -m1 '^schemathesis==' "$requirements") and its pinned dependencies from PyPI"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install --quiet --requirement "$requirements" ||
    fail "could not install scripts/requirements-test.txt (schemathesis, openapi-spec-validator) into $venv with pip"
  venv_has_pins ||
    fail "$venv does not have the versions of scripts/requirements-test.txt after installing them"
fi
schemathesis="$venv/bin/schemathesis"
st_version=$("$schemathesis" --version 2>&1) ||
  fail "schemathesis was installed in $venv but does not run: $st_version"
export TOLLGATE_SCHEMATHESIS="$schemathesis"
say "TOLLGATE_SCHEMATHESIS=$TOLLGATE_SCHEMATHESIS ($st_version)"
validator="$venv/bin/openapi-spec-validator"
"$validator" --help >/dev/null 2>&1 ||
  fail "openapi-spec-validator was installed in $venv but does not run"
export TOLLGATE_OPENAPI_SPEC_VALIDATOR="$validator"
say "TOLLGATE_OPENAPI_SPEC_VALIDATOR=$TOLLGATE_OPENAPI_SPEC_VALIDATOR"
python="$venv/bin/python"
"$python" -c 'import prometheus_client' >/dev/null 2>&1 ||
  fail "prometheus_client was installed in $venv but does not import"
"$python" -c 'import stripe' >/dev/null 2>&1 ||
  fail "stripe was installed in $venv but does not import"
"$python" -c 'import fal_client' >/dev/null 2>&1 ||
  fail "fal-client was installed in $venv but fal_client does not import"
export TOLLGATE_PYTHON="$python"
say "TOLLGATE_PYTHON=$TOLLGATE_PYTHON (with prometheus_client, Prometheus' parser of the metrics text; stripe, Stripe's signatures; fal_client, fal's own client of the gateway)"
focus="$venv/bin/focus-validator"
"$focus" --help >/dev/null 2>&1 ||
  fail "focus-validator was installed in $venv but does not run"
export TOLLGATE_FOCUS_VALIDATOR="$focus"
say "TOLLGATE_FOCUS_VALIDATOR=$TOLLGATE_FOCUS_VALIDATOR (the FinOps Foundation's FOCUS validator)"

# --- pdftotext: Debian `poppler-utils` ----------------------------------------------------------
if ! command -v pdftotext >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 ||
    fail "pdftotext is not installed and there is no apt-get to install it: install poppler-utils (the invoice PDF tests read their text with it)"
  say "installing poppler-utils (pdftotext) with apt-get"
  { apt-get install -y poppler-utils >/dev/null 2>&1 ||
    { apt-get update >/dev/null && apt-get install -y poppler-utils >/dev/null; }; } ||
    fail "could not install poppler-utils (pdftotext) with apt-get: the invoice PDF tests need it"
fi
pdftotext=$(command -v pdftotext) ||
  fail "poppler-utils was installed but pdftotext is not on the PATH"
"$pdftotext" -v >/dev/null 2>&1 ||
  fail "pdftotext ($pdftotext) does not run"
export TOLLGATE_PDFTOTEXT="$pdftotext"
say "TOLLGATE_PDFTOTEXT=$TOLLGATE_PDFTOTEXT ($("$pdftotext" -v 2>&1 | head -n1))"

# --- Browser: Debian `chromium` and `chromium-driver` ------------------------------------------
# The dashboard's browser tests drive a real headless Chromium over WebDriver.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 ||
    fail "chromium and chromedriver are not installed and there is no apt-get to install them: install Debian's chromium and chromium-driver (the dashboard's browser tests need them)"
  say "installing chromium and chromium-driver with apt-get (the dashboard's browser tests)"
  pkgs=(chromium chromium-driver)
  { apt-get install -y --no-install-recommends "${pkgs[@]}" >/dev/null 2>&1 ||
    { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${pkgs[@]}" >/dev/null; }; } ||
    fail "could not install chromium and chromium-driver with apt-get: the dashboard's browser tests need them"
fi
chromium=$(command -v chromium) || fail "chromium was installed but is not on the PATH"
chromedriver=$(command -v chromedriver) || fail "chromium-driver was installed but chromedriver is not on the PATH"
"$chromedriver" --version >/dev/null 2>&1 || fail "chromedriver ($chromedriver) does not run"
export TOLLGATE_CHROMIUM="$chromium" TOLLGATE_CHROMEDRIVER="$chromedriver"
say "TOLLGATE_CHROMIUM=$TOLLGATE_CHROMIUM ($("$chromium" --version 2>/dev/null | head -n1))"
say "TOLLGATE_CHROMEDRIVER=$TOLLGATE_CHROMEDRIVER ($("$chromedriver" --version | head -n1))"
say "the browser tests save screenshots of every page under target/dashboard-screenshots/"

# --- The tests ---------------------------------------------------------------------------------
if [ -n "${TOLLGATE_TEST_POSTGRES_URL:-}" ]; then
  say "TOLLGATE_TEST_POSTGRES_URL is set: the PostgreSQL tests run too"
else
  say "TOLLGATE_TEST_POSTGRES_URL is not set: the PostgreSQL tests will say they were skipped"
fi
# `--workspace` would override a package chosen with -p/--package, so it is added only when the
# arguments (before a `--`) choose none.
scope=(--workspace)
for arg in "$@"; do
  case "$arg" in
    --) break ;;
    -p | -p?* | --package | --package=*) scope=() ;;
  esac
done
cmd=(cargo test "${scope[@]}" "$@")
say "${cmd[*]}"
exec "${cmd[@]}"
