#!/bin/bash
# In a Debian root (as root): install the sysgenid-dkms package with apt, check that DKMS built
# and installed the module for every kernel with headers, keep a copy of each build for the
# guest, then purge the package and check that nothing of it is left.
# Usage: kernel/deb/check-deb.sh DEB OUTDIR
# Writes OUTDIR/<KVER>/sysgenid.ko and build/dkms/<KVER> (for kernel/vm/matrix.py).
set -euo pipefail
DEB=$(realpath "$1")
OUT=$2
REPORTS="$(cd "$(dirname "$0")" && pwd)/../../build/dkms"
VERSION=$(dpkg-deb -f "$DEB" Version)
export DEBIAN_FRONTEND=noninteractive
fail() { echo "check-deb: $*" >&2; exit 1; }

apt-get install -y -q --no-install-recommends "$DEB" >/dev/null \
  || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "$DEB" >/dev/null; }
[ -f /usr/include/linux/sysgenid.h ] || fail "no /usr/include/linux/sysgenid.h"
[ -f /usr/lib/udev/rules.d/60-sysgenid.rules ] || fail "no udev rule"
kernels=$(ls -d /lib/modules/*/build 2>/dev/null | sed 's|/lib/modules/\(.*\)/build|\1|' | sort -V)
[ -n "$kernels" ] || fail "no kernel headers in this root"
for KVER in $kernels; do
  installed=$(find "/lib/modules/$KVER/" -name 'sysgenid.ko*' -path '*dkms*' | head -1)
  [ -n "$installed" ] || fail "the package's postinst built no module for $KVER"
  modinfo -F parm "$installed" | grep -q '^flavour:' || fail "$installed is not our module"
  mkdir -p "$OUT/$KVER"
  case "$installed" in
    *.ko.xz) xz -dc "$installed" > "$OUT/$KVER/sysgenid.ko" ;;
    *.ko.zst) zstd -qdc "$installed" > "$OUT/$KVER/sysgenid.ko" ;;
    *.ko.gz) gzip -dc "$installed" > "$OUT/$KVER/sysgenid.ko" ;;
    *) cp "$installed" "$OUT/$KVER/sysgenid.ko" ;;
  esac
  signed="unsigned"
  if [ -e /var/lib/dkms/mok.pub ] && [ -n "$(modinfo -F signer "$installed")" ]; then signed="signed"; fi
  mkdir -p "$REPORTS" && echo "installed from sysgenid-dkms_${VERSION}_all.deb, $signed ($(dkms --version))" \
    > "$REPORTS/$KVER"
  echo "check-deb: apt installed sysgenid-dkms $VERSION; DKMS built $installed"
done
apt-get purge -y -q sysgenid-dkms >/dev/null
left=$(find /lib/modules -name 'sysgenid.ko*' -path '*dkms*' | head -1)
[ -z "$left" ] || fail "purged, but $left is left"
[ ! -e "/usr/src/sysgenid-$VERSION" ] || fail "purged, but /usr/src/sysgenid-$VERSION is left"
echo "check-deb: purged; nothing of the package is left"
