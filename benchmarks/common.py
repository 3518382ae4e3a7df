"""What every benchmark shares: the device under test, samples and their statistics, results.

A benchmark compares the library with a baseline written by hand on the same device, in
the same run, interleaved round by round, so that drift on a noisy machine (or inside
an emulated guest) hits both alike. A ratio is the median over rounds of
``median(library samples) / median(baseline samples)`` for that round; its spread is the
range of the round ratios.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sysgenid_async import uapi
from sysgenid_async.rawfile import KernelFile, RawFile
from sysgenid_async.testing import SimulatedDevice
from sysgenid_async.uapi import Abi

SIM_PATH = "/run/sysgenid-bench/sim"


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Figure:
    """Samples of one quantity, summarised by median and the 10th-90th percentile spread."""

    name: str
    unit: str
    samples: list[float]

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "n": len(self.samples),
            "median": statistics.median(self.samples) if self.samples else float("nan"),
            "p10": quantile(self.samples, 0.1),
            "p90": quantile(self.samples, 0.9),
        }


@dataclass
class Comparison:
    """The library against its baseline, with the target the ratio must meet (if any)."""

    benchmark: str
    case: str
    library: Figure
    baseline: Figure
    round_ratios: list[float]
    target: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float:
        return statistics.median(self.round_ratios)

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio <= self.target

    def summary(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "case": self.case,
            "library": self.library.summary(),
            "baseline": self.baseline.summary(),
            "ratio": self.ratio,
            "ratio_min": min(self.round_ratios),
            "ratio_max": max(self.round_ratios),
            "rounds": len(self.round_ratios),
            "target": self.target,
            "met": self.met,
            "note": self.note,
        }


@dataclass
class Measure:
    """A figure with no baseline (an absolute floor, a footprint), and its target if any."""

    benchmark: str
    figure: Figure
    target: float | None = None  # the median must not exceed it
    note: str = ""

    def summary(self) -> dict[str, Any]:
        median = self.figure.summary()["median"]
        return {
            "benchmark": self.benchmark,
            **self.figure.summary(),
            "target": self.target,
            "met": None if self.target is None else median <= self.target,
            "note": self.note,
        }


@dataclass
class Results:
    comparisons: list[Comparison] = field(default_factory=list)
    measures: list[Measure] = field(default_factory=list)
    #: curves for the plots: name -> {"x": [...], series name -> [...]}
    series: dict[str, dict[str, Any]] = field(default_factory=dict)


def compare_rounds(
    benchmark: str, case: str, unit: str, rounds: list[tuple[list[float], list[float]]],
    *, target: float | None = None, note: str = "",
) -> Comparison:
    """Build a comparison from rounds of (library samples, baseline samples)."""
    library = [s for lib, _ in rounds for s in lib]
    baseline = [s for _, base in rounds for s in base]
    ratios = [statistics.median(lib) / statistics.median(base) for lib, base in rounds]
    return Comparison(benchmark, case, Figure(case, unit, library), Figure("baseline", unit, baseline),
                      ratios, target, note)


# -- the device under test -----------------------------------------------------------------


class DeviceUnderTest:
    """The simulator in this process, or the kernel module's /dev/sysgenid."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.kernel = backend.startswith("kernel")
        self.abi = Abi(backend.rsplit("-", 1)[1])
        self.path = uapi.DEFAULT_DEVICE_PATH if self.kernel else SIM_PATH
        self.sim = None if self.kernel else SimulatedDevice(self.abi)
        self._trigger_fd = -1

    @contextmanager
    def active(self) -> Iterator[DeviceUnderTest]:
        if self.sim is not None:
            with self.sim.installed(self.path, set_env=True):
                yield self
            return
        previous = os.environ.get(uapi.DEVICE_ENV_VAR)
        os.environ[uapi.DEVICE_ENV_VAR] = self.path
        self._trigger_fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            yield self
        finally:
            os.close(self._trigger_fd)
            self._trigger_fd = -1
            if previous is None:
                os.environ.pop(uapi.DEVICE_ENV_VAR, None)
            else:
                os.environ[uapi.DEVICE_ENV_VAR] = previous

    def bump(self) -> None:
        """Force a new generation, as a snapshot restore would (the same call for every case)."""
        if self.sim is not None:
            self.sim.bump()
            return
        if _libc.ioctl(self._trigger_fd, ctypes.c_ulong(self.abi.trigger_request), ctypes.c_ulong(0)) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))
        if self.abi is Abi.V4:  # every v4 file is a watcher: this one must not hold a wait back
            os.write(self._trigger_fd, os.read(self._trigger_fd, 4))

    @property
    def generation(self) -> int:
        if self.sim is not None:
            return self.sim.generation
        with open(self.path, "rb", buffering=0) as file:
            import mmap

            with mmap.mmap(file.fileno(), 4096, prot=mmap.PROT_READ) as page:
                return int.from_bytes(page[:4], sys.byteorder)


_libc = ctypes.CDLL(None, use_errno=True)


def raw_read_and_ack(raw: RawFile) -> tuple[Callable[[], bytes], Callable[[bytes], int]]:
    """A baseline's bare read and acknowledgement on ``raw``: ``os.read``/``os.write`` on the
    kernel file; the simulator's own read/write (its fd is an eventfd that only signals)."""
    if isinstance(raw, KernelFile):
        fd = raw.fileno()
        return (lambda: os.read(fd, 4)), (lambda data: os.write(fd, data))
    return (lambda: raw.read(4)), raw.write


class Countdown:
    """Counts the watchers or subscribers done with the current change; notes when the last was.

    ``make_event`` is the event class of the loop in use (``asyncio.Event``, ``trio.Event``).
    """

    def __init__(self, total: int, make_event: Callable[[], Any]) -> None:
        self.total = total
        self._make_event = make_event
        self.count = 0
        self._finished = make_event()
        self.finished_at = 0

    def reset(self) -> None:
        self.count = 0
        self._finished = self._make_event()

    def hit(self) -> None:
        self.count += 1
        if self.count == self.total:
            self.finished_at = time.monotonic_ns()
            self._finished.set()

    async def wait(self) -> None:
        await self._finished.wait()


async def task_floor(raw: RawFile, body: Callable[[int], Awaitable[object] | None]) -> None:
    """The task-based floor for ``async for generation in watch()``, written by hand on asyncio.

    The same semantics as ``watch()``: a task waits on a future that a reader callback sets,
    reads, runs the body, then acknowledges (a change that came meanwhile is read next).
    The reader is registered only while the task waits: the file stays readable until the
    acknowledgement, so a level-triggered reader left in place would fire during the body.
    Runs until cancelled; ``raw`` stays the caller's to close.
    """
    loop = asyncio.get_running_loop()
    fd = raw.fileno()
    read, write = raw_read_and_ack(raw)

    def wake(waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_result(None)

    while True:
        waiter: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, wake, waiter)
        try:
            await waiter
        finally:
            loop.remove_reader(fd)
        try:
            data = read()
        except BlockingIOError:
            continue
        result = body(int.from_bytes(data, sys.byteorder))
        if result is not None:
            await result
        with contextlib.suppress(OSError):  # EINVAL: a newer generation came, read next
            write(data)


def machine(place: str) -> dict[str, Any]:
    """Where the figures came from."""
    cpu = "unknown"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "place": place,
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def to_json(results: Results, backend: str, place: str, settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "backend": backend,
        "machine": machine(place),
        "settings": settings,
        "comparisons": [c.summary() for c in results.comparisons],
        "measures": [m.summary() for m in results.measures],
        "series": results.series,
    }

