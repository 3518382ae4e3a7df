#!/bin/bash
# Check that DKMS builds and installs the module against this machine's kernel headers,
# then remove it again. Root; installs the dkms package when it is missing.
# Usage: kernel/dkms-check.sh [KVER]   (default: the newest kernel with headers)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
VERSION=$(sed -n 's/^PACKAGE_VERSION="\(.*\)"/\1/p' "$HERE/dkms.conf")
KVER=${1:-$(ls -d /lib/modules/*/build 2>/dev/null | sed 's|/lib/modules/\(.*\)/build|\1|' | sort -V | tail -1)}
[ -n "$KVER" ] || { echo "dkms-check: no kernel headers installed" >&2; exit 1; }
if ! command -v dkms >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends dkms >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends dkms >/dev/null; }
fi
SRC=/usr/src/sysgenid-$VERSION
cleanup() {
  dkms remove "sysgenid/$VERSION" --all >/dev/null 2>&1 || true
  rm -rf "$SRC"
}
trap cleanup EXIT
cleanup
mkdir -p "$SRC"
cp "$HERE"/sysgenid.c "$HERE"/sysgenid.h "$HERE"/Kbuild "$HERE"/Makefile "$HERE"/dkms.conf "$SRC/"
dkms add "sysgenid/$VERSION"
dkms build "sysgenid/$VERSION" -k "$KVER"
dkms install "sysgenid/$VERSION" -k "$KVER"
installed=$(find "/lib/modules/$KVER" -name 'sysgenid.ko*' -path '*dkms*' | head -1)
[ -n "$installed" ] || { echo "dkms-check: no installed sysgenid.ko for $KVER" >&2; exit 1; }
modinfo -F parm "$installed" | grep -q '^abi:' || { echo "dkms-check: $installed is not our module" >&2; exit 1; }
dkms status "sysgenid/$VERSION"
echo "dkms-check: sysgenid $VERSION built and installed for $KVER: $installed"
