"""A watcher in another process, driven line by line over stdin (kernel backends).

Usage: python peer_process.py DEVICE [track]
Prints "ready" once open, then answers each command with one line:
    read   -> the unacknowledged generation, or "none"
    ack    -> "acked N" (acknowledges the current unacknowledged generation), or "none"
    track N -> "ok" (v8 SET_WATCHER_TRACKING)
    quit   -> exits (closing the file)
Deliberately free of the library: it plays an independent client.
"""

import errno
import fcntl
import os
import sys

V8_SET_WATCHER_TRACKING = (0xE4 << 8) | 1


def main() -> None:
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    if len(sys.argv) > 2 and sys.argv[2] == "track":
        fcntl.ioctl(fd, V8_SET_WATCHER_TRACKING, 1)
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        if command[0] in ("read", "ack"):
            try:
                data = os.read(fd, 4)
            except OSError as exc:
                if exc.errno != errno.EAGAIN:
                    raise
                print("none", flush=True)
                continue
            if command[0] == "ack":
                os.write(fd, data)
                print(f"acked {int.from_bytes(data, sys.byteorder)}", flush=True)
            else:
                print(int.from_bytes(data, sys.byteorder), flush=True)
        elif command[0] == "track":
            fcntl.ioctl(fd, V8_SET_WATCHER_TRACKING, int(command[1]))
            print("ok", flush=True)
    os.close(fd)


if __name__ == "__main__":
    main()
