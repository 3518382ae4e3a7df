#!/bin/bash
# Build sysgenid-dkms_<version>_all.deb from kernel/: the module's source for DKMS, the udev
# rule and the userspace ABI header. Standard Debian tools only (dpkg-deb), no debhelper.
# Usage: kernel/deb/build-deb.sh [OUTDIR]   (default: build/deb); prints the package's path.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
KERNEL=$(dirname "$HERE")
OUT=$(mkdir -p "${1:-$KERNEL/../build/deb}" && cd "${1:-$KERNEL/../build/deb}" && pwd)
VERSION=$(sed -n 's/^PACKAGE_VERSION="\(.*\)"/\1/p' "$KERNEL/dkms.conf")
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT

SRC="$STAGE/usr/src/sysgenid-$VERSION"
mkdir -p "$SRC" "$STAGE/usr/lib/udev/rules.d" "$STAGE/usr/include/linux" "$STAGE/DEBIAN" \
  "$STAGE/usr/share/doc/sysgenid-dkms"
cp -r "$KERNEL"/sysgenid.c "$KERNEL"/sysgenid-flavours.h "$KERNEL"/uapi "$KERNEL"/Kbuild "$KERNEL"/Makefile \
  "$KERNEL"/dkms.conf "$SRC/"
cp "$KERNEL/60-sysgenid.rules" "$STAGE/usr/lib/udev/rules.d/"
cp "$KERNEL/uapi/sysgenid.h" "$STAGE/usr/include/linux/sysgenid.h"
printf 'The sysgenid kernel module of the sysgenid-async project, built by DKMS.\nLicense: GPL-2.0\n' \
  > "$STAGE/usr/share/doc/sysgenid-dkms/copyright"
sed "s/@VERSION@/$VERSION/g" "$HERE/control.in" > "$STAGE/DEBIAN/control"
for script in postinst prerm; do
  sed "s/@VERSION@/$VERSION/g" "$HERE/$script.in" > "$STAGE/DEBIAN/$script"
  chmod 755 "$STAGE/DEBIAN/$script"
done
find "$STAGE" -type d -exec chmod 755 {} +
find "$STAGE/usr" -type f -exec chmod 644 {} +
DEB="$OUT/sysgenid-dkms_${VERSION}_all.deb"
dpkg-deb --root-owner-group --build "$STAGE" "$DEB" >/dev/null
echo "$DEB"
