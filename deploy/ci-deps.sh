#!/usr/bin/env bash
# Installs the tools tests/deploy/ and tests/state/ use, if missing: promtool, systemd-analyze
# (systemd), pkill (procps, for the unit's ExecReload), docker-compose (to validate
# compose.yaml), redis-server and redis-cli (the shared state store's tests start their own,
# on loopback) and sqlite3 (the local store's backup, as docs/operations.md tells it).
# Idempotent and quiet; without root or apt-get it installs nothing,
# and the tests that need a missing tool skip, saying which.
#
# promtool comes out of Debian's prometheus package without installing the package: that
# would also enable (and on a machine running systemd, start) a Prometheus server.
set -euo pipefail

apt_want=()
command -v systemd-analyze >/dev/null 2>&1 || apt_want+=(systemd)
command -v pkill >/dev/null 2>&1 || apt_want+=(procps)
command -v docker-compose >/dev/null 2>&1 || apt_want+=(docker-compose)
command -v redis-server >/dev/null 2>&1 || apt_want+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || apt_want+=(redis-tools)
command -v sqlite3 >/dev/null 2>&1 || apt_want+=(sqlite3)
need_promtool=0
command -v promtool >/dev/null 2>&1 || need_promtool=1
[ ${#apt_want[@]} -eq 0 ] && [ $need_promtool -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "deploy/ci-deps.sh: not installing ${apt_want[*]} promtool (needs root and apt-get); those tests will skip" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
apt-get update -qq >"$tmp/log" 2>&1 || true
if [ ${#apt_want[@]} -gt 0 ] && ! apt-get install -y -qq --no-install-recommends "${apt_want[@]}" >>"$tmp/log" 2>&1; then
    echo "deploy/ci-deps.sh: apt-get install ${apt_want[*]} failed; those tests will skip:" >&2
    tail -n 5 "$tmp/log" >&2
fi
if [ $need_promtool -eq 1 ]; then
    if (cd "$tmp" && apt-get download prometheus >>"$tmp/log" 2>&1 && dpkg-deb -x prometheus_*.deb x \
            && install -m 0755 x/usr/bin/promtool /usr/local/bin/promtool); then
        :
    else
        echo "deploy/ci-deps.sh: could not get promtool from Debian's prometheus package; those tests will skip" >&2
    fi
fi
exit 0
