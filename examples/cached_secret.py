"""The spec's third example: a cached secret checked against the mapped generation.

    python examples/cached_secret.py --simulate

The hot path reads the generation from the mapped page (no syscall) and compares it
with the one the secret was derived under; only a change pays for a rebuild.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import os

from sysgenid_async import Device
from sysgenid_async.testing import SimulatedDevice


class SigningKey:
    """An HMAC key that is re-derived whenever the system generation changes."""

    def __init__(self, device: Device) -> None:
        self._device = device
        self._generation = device.generation
        self._key = os.urandom(32)

    def sign(self, message: bytes) -> str:
        generation = self._device.generation  # one read from the mapped page
        if generation != self._generation:  # != , never >: generations wrap
            self._key = os.urandom(32)
            self._generation = generation
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--simulate", action="store_true")
    options = parser.parse_args()
    with contextlib.ExitStack() as stack:
        simulator = stack.enter_context(SimulatedDevice().installed()) if options.simulate else None
        device = stack.enter_context(Device.open(watcher=False))
        key = SigningKey(device)
        before = key.sign(b"hello")
        assert key.sign(b"hello") == before
        print(f"signature before: {before[:16]}...")
        if simulator:
            simulator.bump()
        after = key.sign(b"hello")
        print(f"signature after:  {after[:16]}... ({'changed' if after != before else 'unchanged'})")


if __name__ == "__main__":
    main()
