#!/usr/bin/env bash
# Installs riac-node from this offline bundle (a USB stick at a site with no internet).
# Run as root in the unpacked bundle folder: ./install.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
[[ $(id -u) -eq 0 ]] || { echo "install.sh: run as root (sudo ./install.sh)" >&2; exit 1; }

echo "install.sh: checking SHA256SUMS"
sha256sum --check --strict SHA256SUMS

arch="$(dpkg --print-architecture)"
deb="$(ls riac-node_*_"${arch}".deb 2>/dev/null | head -n1 || true)"
[[ -n "$deb" ]] || { echo "install.sh: this bundle has no package for architecture ${arch}" >&2; exit 1; }

echo "install.sh: installing $deb"
dpkg -i "$deb"

cat <<MSG

riac-node is installed (not started). Next, per the commissioning checklist:
  1. edit /etc/riac-node/riac-node.toml (node.node_id, node.site_id, paths, broker)
  2. riac-node doctor --config /etc/riac-node/riac-node.toml
  3. systemctl start riac-node && journalctl -u riac-node -f
MSG
