"""An orchestrator with several worker processes: pause, confirm, wait for all, resume.

    python examples/orchestrator.py --trigger     # real device: worker processes, one forced restore
    python examples/orchestrator.py --simulate    # the simulator lives in this process: workers are threads
    python examples/orchestrator.py               # real device: orchestrate real restores, for ever

Each worker runs the process's restore watcher with one hook that takes a while; the
orchestrator acknowledges first, then waits until every worker has acknowledged too.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable

import anyio
from _restores import parser, restores

from sysgenid_async.restore import Orchestrator, RestoreHooks, restore_watcher

WORKERS = (("cache", 0.1), ("pool", 0.3), ("indexer", 0.5))


async def worker(
    name: str, rebuild_seconds: float, ready: Callable[[], object], wait_for_stop: Callable[[], object]
) -> None:
    hooks = RestoreHooks()

    @hooks.register
    async def rebuild(generation: int) -> None:
        await anyio.sleep(rebuild_seconds)
        print(f"{name}: rebuilt for generation {generation}", flush=True)

    async with restore_watcher(hooks=hooks):
        ready()
        await anyio.to_thread.run_sync(wait_for_stop)


def start_workers(simulated: bool) -> Callable[[], None]:
    """Start the workers (processes, or threads on the simulator); returns a stopper."""
    if simulated:
        stop = threading.Event()
        started = threading.Semaphore(0)
        threads = [
            threading.Thread(target=anyio.run, args=(worker, name, seconds, started.release, stop.wait))
            for name, seconds in WORKERS
        ]
        for thread in threads:
            thread.start()
        for _ in threads:
            started.acquire()

        def stop_threads() -> None:
            stop.set()
            for thread in threads:
                thread.join()

        return stop_threads
    processes = [
        subprocess.Popen([sys.executable, __file__, "--worker", name, str(seconds)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
        for name, seconds in WORKERS
    ]
    for process in processes:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"

    def stop_processes() -> None:
        for process in processes:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.close()
            sys.stdout.write(process.stdout.read())
            process.wait()

    return stop_processes


async def orchestrate(restore: Callable[[], int] | None) -> bool:
    async with Orchestrator(timeout=10, pause=lambda g: print(f"orchestrator: generation {g}, pausing"),
                            resume=lambda g: print(f"orchestrator: generation {g}, resuming")) as orchestrator:
        if restore is not None:
            restore()
        async for report in orchestrator:
            late = "" if report.late_watchers is None else f", {report.late_watchers} late"
            print(f"orchestrator: {report.result.value} in {report.elapsed:.2f}s{late}", flush=True)
            if restore is not None:
                return report.caught_up
    return False


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        anyio.run(worker, sys.argv[2], float(sys.argv[3]), lambda: print("ready", flush=True), sys.stdin.read)
        return
    options = parser(__doc__).parse_args()
    with restores(options) as restore:
        stop_workers = start_workers(options.simulate)
        try:
            caught_up = anyio.run(orchestrate, restore)
        finally:
            stop_workers()
    raise SystemExit(0 if caught_up else 1)


if __name__ == "__main__":
    main()
