#!/bin/bash
# Check that DKMS builds and installs the module against this machine's kernel headers,
# then remove it again. Root; installs the dkms package when it is missing.
# Usage: kernel/dkms-check.sh [KVER...]   (default: every kernel with headers)
# Writes build/dkms/<KVER> (what was installed, and its signer) for kernel/vm/matrix.py.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPORTS="$HERE/../build/dkms"
VERSION=$(sed -n 's/^PACKAGE_VERSION="\(.*\)"/\1/p' "$HERE/dkms.conf")
if [ $# -eq 0 ]; then
  set -- $(ls -d /lib/modules/*/build 2>/dev/null | sed 's|/lib/modules/\(.*\)/build|\1|' | sort -V)
fi
[ $# -gt 0 ] || { echo "dkms-check: no kernel headers installed" >&2; exit 1; }
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
cp -r "$HERE"/sysgenid.c "$HERE"/sysgenid-flavours.h "$HERE"/uapi "$HERE"/Kbuild "$HERE"/Makefile "$HERE"/dkms.conf "$SRC/"
dkms add "sysgenid/$VERSION"
for KVER in "$@"; do
  dkms build "sysgenid/$VERSION" -k "$KVER"
  dkms install "sysgenid/$VERSION" -k "$KVER"
  installed=$(find "/lib/modules/$KVER/" -name 'sysgenid.ko*' -path '*dkms*' | head -1)
  [ -n "$installed" ] || { echo "dkms-check: no installed sysgenid.ko for $KVER" >&2; exit 1; }
  modinfo -F parm "$installed" | grep -q '^flavour:' || { echo "dkms-check: $installed is not our module" >&2; exit 1; }
  # Debian's DKMS signs what it builds with its MOK (made on first use when openssl is
  # there), the key a Secure Boot machine's owner enrols with mokutil --import
  signed="unsigned"
  if [ -e /var/lib/dkms/mok.pub ]; then
    signer=$(modinfo -F signer "$installed")
    [ -n "$signer" ] || { echo "dkms-check: DKMS has a MOK but $installed is not signed" >&2; exit 1; }
    echo "dkms-check: signed by \"$signer\" (/var/lib/dkms/mok.pub)"
    signed="signed"
  fi
  mkdir -p "$REPORTS" && echo "installed, $signed ($(dkms --version))" > "$REPORTS/$KVER"
  echo "dkms-check: sysgenid $VERSION built and installed for $KVER: $installed"
done
dkms status "sysgenid/$VERSION"
