#!/usr/bin/env bash
# Debian's chromium, for the test that opens scoreboard.html in a real headless browser
# (tests/scoreboard_browser.rs). Needs root (apt-get); not needed for grading.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then echo "chromium present: $(chromium --version 2>/dev/null || true)"; exit 0; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "chromium installed: $(chromium --version 2>/dev/null || true)"
