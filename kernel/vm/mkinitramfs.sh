#!/bin/bash
# Build the stage-1 initramfs: klibc tools, the virtio/virtiofs modules, stage1-init.
# Usage: mkinitramfs.sh KVER OUT.cpio.gz
set -euo pipefail
KVER=${1:?kernel release}
OUT=${2:?output file}
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
  modprobe -S "$KVER" --show-depends "$m" | awk '$1 == "insmod" { print $2 }'
done | awk '!seen[$0]++' | while read -r ko; do
  case "$ko" in
    *.ko) ;;
    *) echo "mkinitramfs: compressed module $ko: klibc insmod cannot load it" >&2; exit 1 ;;
  esac
  cp "$ko" "$W/modules/"
  basename "$ko" >> "$W/modules/order"
done
install -m 755 "$HERE/stage1-init" "$W/init"
(cd "$W" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT"
