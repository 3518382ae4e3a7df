"""An orchestrator: on a restore, pause, confirm, wait for every other watcher, resume.

    python examples/orchestrator.py --simulate

The spec's fourth example, in async Python: the orchestrator's own watcher acks first,
then ``wait_watchers`` returns once every other component on the machine has
acknowledged (or the timeout runs out, or another restore arrives meanwhile).
"""

from __future__ import annotations

import argparse

import anyio

from sysgenid_async import WaitResult, open_sysgenid, watch
from sysgenid_async.testing import SimulatedDevice

TIMEOUT_SECONDS = 5.0


async def orchestrate(once: bool) -> WaitResult:
    result = WaitResult.TIMED_OUT
    async with open_sysgenid() as device:
        while True:
            generation = await device.wait_for_change()
            print(f"orchestrator: generation {generation}, pausing the service", flush=True)
            device.ack(generation)
            result = await device.wait_watchers(TIMEOUT_SECONDS)
            if result is WaitResult.CALLER_OUTDATED:
                continue  # another restore came in: handle that one
            print(f"orchestrator: {result.value}, resuming", flush=True)
            if once:
                return result


async def component(name: str, rebuild_seconds: float) -> None:
    async for generation in watch():
        await anyio.sleep(rebuild_seconds)
        print(f"{name}: rebuilt for generation {generation}", flush=True)
        break  # the demo handles one restore; a real component keeps looping


async def simulated_story() -> WaitResult:
    simulator = SimulatedDevice()
    with simulator.installed():
        results: list[WaitResult] = []
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(component, "cache", 0.1)
            tasks.start_soon(component, "pool", 0.2)

            async def run() -> None:
                results.append(await orchestrate(once=True))

            tasks.start_soon(run)
            await anyio.sleep(0.1)
            simulator.bump()
        return results[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--simulate", action="store_true")
    options = parser.parse_args()
    if options.simulate:
        raise SystemExit(0 if anyio.run(simulated_story) is WaitResult.CAUGHT_UP else 1)
    anyio.run(orchestrate, False)


if __name__ == "__main__":
    main()
