#!/bin/bash
# Build the stage-1 initramfs: klibc tools, the virtio/virtiofs modules, stage1-init.
# Usage: mkinitramfs.sh KVER OUT.cpio.gz [BASE]
#   BASE: the tree whose lib/modules/KVER holds the kernel's modules (default /)
set -euo pipefail
KVER=${1:?kernel release}
OUT=${2:?output file}
BASE=${3:-/}
HERE=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
mkdir -p "$W"/{bin,lib,proc,sys,dev,newroot,modules}
# the kernel opens /dev/console for init before /init runs, so it must be in the archive
mknod -m 600 "$W/dev/console" c 5 1
mknod -m 666 "$W/dev/null" c 1 3
cp -a /usr/lib/klibc/bin/. "$W/bin/"
cp -a /usr/lib/klibc-*.so "$W/lib/"
: > "$W/modules/order"
for m in virtio_pci virtiofs; do
  # 6.12 and later build both in; a package extracted without its modules.builtin
  # (sid's) then has no record of them at all
  if ! modprobe -d "$BASE" -S "$KVER" --show-depends "$m" 2>/dev/null; then
    echo "mkinitramfs: $m is no module of $KVER: taken as built in" >&2
  fi
done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }' | while read -r ko; do
  # klibc's insmod loads only uncompressed modules
  name=$(basename "$ko")
  case "$ko" in
    *.ko) cp "$ko" "$W/modules/$name" ;;
    *.ko.xz) name=${name%.xz}; xz -dc "$ko" > "$W/modules/$name" ;;
    *.ko.zst) name=${name%.zst}; zstd -qdc "$ko" > "$W/modules/$name" ;;
    *) echo "mkinitramfs: $ko: unknown module compression" >&2; exit 1 ;;
  esac
  echo "$name" >> "$W/modules/order"
done
install -m 755 "$HERE/stage1-init" "$W/init"
(cd "$W" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT"
