/* The absolute floor for wake-up latency: a C watcher on epoll.
 * Prints "ready", then "<generation> <CLOCK_MONOTONIC ns>" as each change is read, then
 * acknowledges it by writing the generation back. Usage: epoll_watcher /dev/sysgenid */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s DEVICE\n", argv[0]);
		return 2;
	}
	int fd = open(argv[1], O_RDWR | O_NONBLOCK | O_CLOEXEC);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event event = { .events = EPOLLIN };
	if (fd < 0 || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &event) < 0) {
		perror(argv[1]);
		return 1;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	puts("ready");
	for (;;) {
		if (epoll_wait(ep, &event, 1, -1) < 0) {
			if (errno == EINTR)
				continue;
			perror("epoll_wait");
			return 1;
		}
		uint32_t generation;
		ssize_t got = read(fd, &generation, sizeof(generation));
		if (got < 0 && errno == EAGAIN)
			continue;
		if (got != sizeof(generation)) {
			perror("read");
			return 1;
		}
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		printf("%u %lld\n", generation, (long long)now.tv_sec * 1000000000LL + now.tv_nsec);
		if (write(fd, &generation, sizeof(generation)) != sizeof(generation) && errno != EINVAL) {
			perror("write");
			return 1;
		}
	}
}
