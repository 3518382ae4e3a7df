// SPDX-License-Identifier: MIT
/*
 * The ABI as a 32-bit program sees it, through the kernel's compat ioctl path:
 * tests/test_conformance.py builds this with gcc -m32 and runs it in the guest.
 *
 * Usage: abi32 PATH 4|8 MIN. Prints "generation=G wait=E ack=A" after a trigger
 * with the minimum MIN (an unsigned 32-bit value, so 2**31 and above as well),
 * a WAIT_WATCHERS by this outdated file (E: its errno), and an ack (A: write's result).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <sysgenid.h>

int main(int argc, char **argv)
{
	sysgenid_generation_t generation;
	unsigned long minimum;
	int fd, v8, wait_errno = 0;
	ssize_t acked;

	if (argc != 4 || sizeof(long) != 4) {
		fprintf(stderr, "usage: abi32 PATH 4|8 MIN (built with -m32)\n");
		return 2;
	}
	v8 = atoi(argv[2]) == 8;
	minimum = strtoul(argv[3], NULL, 0);
	fd = open(argv[1], O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		perror("open");
		return 1;
	}
	if (v8 && ioctl(fd, SYSGENID_V8_SET_WATCHER_TRACKING, 1UL) != 0) {
		perror("SET_WATCHER_TRACKING");
		return 1;
	}
	if (ioctl(fd, v8 ? SYSGENID_V8_TRIGGER_GEN_UPDATE : SYSGENID_FORCE_GEN_UPDATE, minimum) != 0) {
		perror("trigger");
		return 1;
	}
	if (read(fd, &generation, sizeof(generation)) != sizeof(generation)) {
		perror("read");
		return 1;
	}
	if (ioctl(fd, v8 ? SYSGENID_V8_WAIT_WATCHERS : SYSGENID_WAIT_WATCHERS, 0UL) != 0)
		wait_errno = errno;
	acked = write(fd, &generation, sizeof(generation));
	printf("generation=%u wait=%d ack=%zd\n", generation, wait_errno, acked);
	return 0;
}
