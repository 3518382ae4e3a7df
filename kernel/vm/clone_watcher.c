/* The floor of restore-to-ready in the clone test: a C watcher on epoll, in the guest.
 *
 * On each change it reads the generation, acknowledges it (write), and prints
 * "C-ACK <generation> <CLOCK_MONOTONIC ns>" with the time the ack returned. A second
 * later a child it forked (the watcher goes on) prints "CLOCK <ns>" twenty times, 2 ms
 * apart, while the guest is quiet: the host
 * stamps each line as it arrives, and the smallest difference between its own clock and
 * the guest's places the guest's clock on the host's (kernel/vm/clones.py).
 *
 * It does not enable tracking: on v8 it is not counted as a watcher, on v4 every file is.
 * It runs at nice -10, as the library's watcher of point (b) does, above the service.
 * Usage: clone_watcher /dev/sysgenid
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static long long monotonic_ns(void)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
}

static void pause_ms(long ms)
{
	struct timespec delay = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };

	while (nanosleep(&delay, &delay) < 0 && errno == EINTR)
		;
}

int main(int argc, char **argv)
{
	struct epoll_event event = { .events = EPOLLIN };
	uint32_t generation;
	long long acked;
	ssize_t got;
	int fd, ep, i;

	if (argc != 2) {
		fprintf(stderr, "usage: %s DEVICE\n", argv[0]);
		return 2;
	}
	fd = open(argv[1], O_RDWR | O_NONBLOCK | O_CLOEXEC);
	ep = epoll_create1(EPOLL_CLOEXEC);
	if (fd < 0 || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &event) < 0) {
		perror(argv[1]);
		return 1;
	}
	if (setpriority(PRIO_PROCESS, 0, -10) < 0)
		perror("setpriority");
	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGCHLD, SIG_IGN); /* the clock children are reaped by the kernel */
	for (;;) {
		if (epoll_wait(ep, &event, 1, -1) < 0) {
			if (errno == EINTR)
				continue;
			perror("epoll_wait");
			return 1;
		}
		got = read(fd, &generation, sizeof(generation));
		if (got < 0 && errno == EAGAIN)
			continue;
		if (got != sizeof(generation)) {
			perror("read");
			return 1;
		}
		/* EINVAL: a newer generation came meanwhile; it is read next */
		if (write(fd, &generation, sizeof(generation)) != sizeof(generation) && errno != EINVAL) {
			perror("write");
			return 1;
		}
		acked = monotonic_ns();
		printf("C-ACK %u %lld\n", generation, acked);
		if (fork() == 0) {
			close(fd);
			close(ep);
			pause_ms(1000);
			for (i = 0; i < 20; i++) {
				printf("CLOCK %lld\n", monotonic_ns());
				pause_ms(2);
			}
			_exit(0);
		}
	}
}
