#!/bin/bash
# Stage 2, PID 1 of the guest, running from the host's root (read-only over virtiofs).
# Sets up /proc, /sys, /dev, a private /tmp, the writable report share at vmout=, then
# runs vmout/job.sh, records its exit status in vmout/exit_code, and powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb LANG=C.UTF-8
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
ln -sf /proc/self/fd /dev/fd
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
VMOUT= VMKEEP=
for a in $(cat /proc/cmdline); do
  case "$a" in vmout=*) VMOUT=${a#vmout=};; vmkeep=*) VMKEEP=${a#vmkeep=};; esac
done
# A private /tmp; a project checked out under /tmp stays visible (read-only).
mkdir -p /run/hosttmp && mount --bind /tmp /run/hosttmp
mount -t tmpfs -o mode=1777 tmpfs /tmp
for keep in ${VMKEEP//,/ }; do
  mkdir -p "$keep" && mount --bind "/run/hosttmp${keep#/tmp}" "$keep"
done
mount -t tmpfs tmpfs /var/tmp
# The unprivileged tests run Python as nobody: when it lives under /root (pyenv), give
# /root a traversable tmpfs and put the interpreter tree back on it.
if [ -d /root/.pyenv ] && [ "$(stat -c %a /root)" = 700 ]; then
  mkdir -p /run/pyenv && mount --bind /root/.pyenv /run/pyenv
  mount -t tmpfs -o mode=755 tmpfs /root
  mkdir -p /root/.pyenv && mount --move /run/pyenv /root/.pyenv
fi
mkdir -p "$VMOUT" 2>/dev/null
mount -t virtiofs hostout "$VMOUT" || echo "SYSGENID-GUEST: report share failed"
hostname sysgenid-guest
ip link set lo up || echo "SYSGENID-GUEST: no loopback"   # tests serve on 127.0.0.1
echo "SYSGENID-GUEST: stage 2 at uptime $(cut -d' ' -f1 /proc/uptime)s"
rc=127
if [ -r "$VMOUT/job.sh" ]; then
  bash "$VMOUT/job.sh" > >(tee "$VMOUT/stdout.txt") 2> >(tee "$VMOUT/stderr.txt" >&2)
  rc=$?
  sleep 0.2   # let the tee processes drain
fi
echo "$rc" > "$VMOUT/exit_code"
echo "SYSGENID-GUEST: job done at uptime $(cut -d' ' -f1 /proc/uptime)s, exit $rc"
sync
poweroff -f >/dev/null 2>&1
echo o > /proc/sysrq-trigger
sleep 5
exit "$rc"
