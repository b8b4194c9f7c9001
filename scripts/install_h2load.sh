#!/usr/bin/env bash
# Put h2load (nghttp2's HTTP/2 load generator, in C) at $1/bin/h2load with the libraries Debian's
# `nghttp2-client` needs beyond a base system, downloaded and unpacked, not installed. The scaling lines of
# `make bench-predict` send gRPC with it: it needs a few percent of a core where the Python load generator
# needs about as much as the server, so on a small machine the server's cores stay its own.
set -euo pipefail
dest=$(realpath -m "$1")
packages=(nghttp2-client libev4 libjemalloc2 libnghttp2-14 libjansson4)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download "${packages[@]}" >/dev/null 2>&1; then
  apt-get update -qq >/dev/null  # a fresh machine has no package lists yet; reading them needs root
  apt-get download "${packages[@]}" >/dev/null
fi
for deb in *.deb; do dpkg -x "$deb" unpacked; done
mkdir -p "$dest/bin" "$dest/lib"
cp -a unpacked/usr/lib/x86_64-linux-gnu/. "$dest/lib/"
install -m 0755 unpacked/usr/bin/h2load "$dest/bin/h2load.real"
cat > "$dest/bin/h2load" <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$dest/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$dest/bin/h2load.real" "\$@"
WRAP
chmod 0755 "$dest/bin/h2load"
"$dest/bin/h2load" --version | head -1
