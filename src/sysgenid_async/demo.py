"""``sysgenid-async demo``: the whole story on the simulator, on any machine.

Three services watch the device, an orchestrator waits for them, one restore
happens; every service rebuilds its unique state and acknowledges, and the
orchestrator sees them all catch up before it resumes.
"""

from __future__ import annotations

import random
import time

import anyio

from .async_device import open_sysgenid
from .changes import watch
from .device import WaitResult
from .testing import SimulatedDevice

DEMO_PATH = "/dev/sysgenid (simulated)"
SERVICES = (("session-tokens", 0.05), ("uuid-allocator", 0.15), ("connection-pool", 0.30))


async def run_demo(abi: str = "v4") -> int:
    """The story on a simulated device that speaks ``abi`` ("v4" or "v8"); 0 when it ends well."""
    start = time.monotonic()

    def say(who: str, text: str) -> None:
        print(f"[{time.monotonic() - start:6.3f}s] {who:>16}: {text}", flush=True)

    sim = SimulatedDevice(abi)
    with sim.installed(DEMO_PATH, set_env=False):
        ready = anyio.Event()
        started = 0
        rebuilt: dict[str, int] = {}

        def one_started() -> None:
            nonlocal started
            started += 1
            if started == len(SERVICES) + 1:
                ready.set()

        async def service(name: str, rebuild_seconds: float) -> None:
            async with watch(DEMO_PATH) as changes:
                one_started()
                async for generation in changes:
                    say(name, f"generation {generation}: rebuilding ({rebuild_seconds:.2f}s)")
                    await anyio.sleep(rebuild_seconds)
                    rebuilt[name] = random.getrandbits(32)
                    say(name, "rebuilt; acknowledging")
                    break  # the demo handles one restore; leaving the block acknowledges it

        async def orchestrator() -> WaitResult:
            async with open_sysgenid(DEMO_PATH) as device:
                one_started()
                generation = await device.wait_for_change()
                v4 = device.abi.value == "v4"
                count = f"{device.outdated_watchers()} watchers" if v4 else "watchers (v8: not counted)"
                say("orchestrator", f"generation {generation}: pausing the service, {count} outdated")
                device.ack(generation)
                result = await device.wait_watchers(timeout=5)
                left = f"{device.outdated_watchers()} outdated; " if v4 else ""
                say("orchestrator", f"wait_watchers -> {result.value}; {left}resuming")
                return result

        outcome: list[WaitResult] = []
        async with anyio.create_task_group() as tasks:
            for name, seconds in SERVICES:
                tasks.start_soon(service, name, seconds)

            async def run_orchestrator() -> None:
                outcome.append(await orchestrator())

            tasks.start_soon(run_orchestrator)
            await ready.wait()
            say("hypervisor", f"snapshot restored: generation {sim.generation} -> {sim.bump()}")

    ok = outcome == [WaitResult.CAUGHT_UP] and len(rebuilt) == len(SERVICES)
    print("demo complete: every service rebuilt and the orchestrator saw them catch up" if ok
          else "demo FAILED", flush=True)
    return 0 if ok else 1
