#!/usr/bin/env bash
# Install the pinned Claude Code and Codex CLIs into tests/clients/node_modules
# for tests/clients (versions: package.json + package-lock.json). Idempotent and
# quiet: does nothing when the pinned versions are already there. Without node/npm
# it says so and exits 0, and the CLI tests skip.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "tests/clients/install.sh: node/npm not found; the Claude Code and Codex CLI tests will be skipped"
    exit 0
fi

want_claude=$(node -p 'require("./package.json").dependencies["@anthropic-ai/claude-code"]')
want_codex=$(node -p 'require("./package.json").dependencies["@openai/codex"]')
have() {  # the installed CLI answers --version with the pinned version
    "node_modules/.bin/$1" --version 2>/dev/null | grep -qF "$2"
}
if have claude "$want_claude" && have codex "$want_codex"; then
    exit 0
fi

# npm ci: exactly the lockfile. Both packages ship a native binary in a per-platform
# optional dependency. Claude Code declares node >= 22 but runs no node code once
# installed, so no engine check.
npm ci --no-audit --no-fund --loglevel=error --engine-strict=false >/dev/null
# Claude Code's postinstall copies its native binary over the bin stub; run it
# ourselves where npm was told not to run install scripts.
have claude "$want_claude" || node node_modules/@anthropic-ai/claude-code/install.cjs >/dev/null
have claude "$want_claude" || { echo "tests/clients/install.sh: claude $want_claude did not install" >&2; exit 1; }
have codex "$want_codex" || { echo "tests/clients/install.sh: codex $want_codex did not install" >&2; exit 1; }
echo "tests/clients: claude-code $want_claude and codex $want_codex installed"
