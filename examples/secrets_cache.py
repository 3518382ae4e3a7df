"""A secrets cache on the mmap fast path: the spec's third example, with GenerationBound.

    python examples/secrets_cache.py --simulate

The signing key is derived once per generation. The hot path reads the generation from
the device's mapped page (no syscall) and compares it with the key's own; only a restore
pays for a new key, so two clones never sign with the same one.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from _restores import parser, restores

from sysgenid_async.restore import generation_bound


@generation_bound
def signing_key() -> bytes:
    return os.urandom(32)


def sign(message: bytes) -> str:
    return hmac.new(signing_key(), message, hashlib.sha256).hexdigest()


def main() -> None:
    options = parser(__doc__).parse_args()
    with restores(options) as restore:
        before = sign(b"hello")
        assert sign(b"hello") == before, "same generation, same key"
        print(f"signature before the restore: {before[:16]}...")
        if restore is None:
            return
        restore()
        after = sign(b"hello")
        print(f"signature after the restore:  {after[:16]}... ({'changed' if after != before else 'UNCHANGED'})")
        print(f"key derivations: {signing_key.rebuilds}")


if __name__ == "__main__":
    main()
