/* SPDX-License-Identifier: GPL-2.0+ WITH Linux-syscall-note */
/*
 * The /dev/sysgenid ioctl numbers, for both ABI personalities.
 * All are _IO: no size and no direction bits; the argument is a plain integer.
 */
#ifndef _SYSGENID_ASYNC_SYSGENID_H
#define _SYSGENID_ASYNC_SYSGENID_H

#include <linux/ioctl.h>

/* v4, the documented ABI */
#define SYSGENID_IOCTL			0x2d
#define SYSGENID_GET_OUTDATED_WATCHERS	_IO(SYSGENID_IOCTL, 1)
#define SYSGENID_WAIT_WATCHERS		_IO(SYSGENID_IOCTL, 2)
#define SYSGENID_FORCE_GEN_UPDATE	_IO(SYSGENID_IOCTL, 3)

/* v8, the shipped ABI */
#define SYSGENID_V8_IOCTL		0xE4
#define SYSGENID_V8_SET_WATCHER_TRACKING	_IO(SYSGENID_V8_IOCTL, 1)
#define SYSGENID_V8_WAIT_WATCHERS	_IO(SYSGENID_V8_IOCTL, 2)
#define SYSGENID_V8_TRIGGER_GEN_UPDATE	_IO(SYSGENID_V8_IOCTL, 3)

#ifdef __KERNEL__
void sysgenid_bump_generation(void);
#endif

#endif
