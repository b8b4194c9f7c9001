#!/usr/bin/env bash
# Put promtool (Prometheus' rule checker) at $1, from Debian's `prometheus` package: downloaded and
# unpacked, not installed (no daemon, no service). `make tools` runs it; tests/deploy/test_monitoring.py
# and the GitLab job `monitoring` use the binary.
set -euo pipefail
dest=$(realpath -m "$1")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download prometheus >/dev/null 2>&1; then
  # A fresh machine has no package lists yet; reading them needs root.
  apt-get update -qq >/dev/null
  apt-get download prometheus >/dev/null
fi
dpkg -x prometheus_*.deb unpacked
install -m 0755 unpacked/usr/bin/promtool "$dest"
"$dest" --version | head -1
