#!/usr/bin/env bash
# Installs Debian's Chromium for the status page's browser test (tests/e2e/test_status_page.py),
# if missing. Idempotent and quiet; without root or apt-get it installs nothing and the browser
# test skips, saying why. chromium-driver comes along for anyone who prefers selenium; our
# test speaks the DevTools protocol to chromium itself.
set -euo pipefail

command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "deploy/ci-browser.sh: not installing chromium (needs root and apt-get); the browser test will skip" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
apt-get update -qq >"$log" 2>&1 || true
if ! apt-get install -y -qq chromium chromium-driver >>"$log" 2>&1; then
    echo "deploy/ci-browser.sh: apt-get install chromium failed; the browser test will skip:" >&2
    tail -n 5 "$log" >&2
fi
exit 0
