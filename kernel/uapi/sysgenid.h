/* SPDX-License-Identifier: GPL-2.0+ WITH Linux-syscall-note */
/*
 * The /dev/sysgenid userspace ABI: ioctl numbers for both personalities.
 *
 * Installable for C programs (make -C kernel install-header). Every ioctl is
 * _IO: no size and no direction bits, and its argument is a plain integer.
 * The generation, read from the device, written back to acknowledge it, and
 * found at offset 0 of the read-only mapping, is a native-endian __u32.
 */
#ifndef _UAPI_SYSGENID_H
#define _UAPI_SYSGENID_H

#include <linux/ioctl.h>
#include <linux/types.h>

typedef __u32 sysgenid_generation_t;

/* v4, the documented ABI: every open file is a watcher */
#define SYSGENID_IOCTL			0x2d
#define SYSGENID_GET_OUTDATED_WATCHERS	_IO(SYSGENID_IOCTL, 1)
#define SYSGENID_WAIT_WATCHERS		_IO(SYSGENID_IOCTL, 2)	/* arg: timeout in ms, 0 = none */
#define SYSGENID_FORCE_GEN_UPDATE	_IO(SYSGENID_IOCTL, 3)	/* arg: minimum generation */

/* v8, the shipped ABI: a file is a watcher after SET_WATCHER_TRACKING(1) */
#define SYSGENID_V8_IOCTL			0xE4
#define SYSGENID_V8_SET_WATCHER_TRACKING	_IO(SYSGENID_V8_IOCTL, 1)	/* arg: 0 or 1 */
#define SYSGENID_V8_WAIT_WATCHERS		_IO(SYSGENID_V8_IOCTL, 2)	/* arg: timeout in ms */
#define SYSGENID_V8_TRIGGER_GEN_UPDATE		_IO(SYSGENID_V8_IOCTL, 3)	/* arg: minimum generation */

#endif /* _UAPI_SYSGENID_H */
