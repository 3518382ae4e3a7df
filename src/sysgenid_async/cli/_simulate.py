"""``simulate``: a script run on the simulated device."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..device import resolve_device_path
from ..restore.registry import (
    RUNTIME_DIR_VARIABLE,
)
from ._options import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
)


def simulate(options: argparse.Namespace) -> int:
    import runpy
    import tempfile
    import threading

    from ..testing import SimulatedDevice

    if options.script is None:
        print("sysgenid-async simulate: needs a SCRIPT to run (a Python file, or -m MODULE), then its "
              "arguments", file=sys.stderr)
        return EXIT_USAGE
    if options.as_module:
        import importlib.util

        try:
            found = importlib.util.find_spec(options.script) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            print(f"sysgenid-async: simulate: no module named {options.script}", file=sys.stderr)
            return EXIT_USAGE
    elif os.path.isdir(options.script) and not os.path.isfile(os.path.join(options.script, "__main__.py")):
        print(f"sysgenid-async: simulate: {options.script}: a directory with no __main__.py", file=sys.stderr)
        return EXIT_USAGE
    elif not os.path.exists(options.script):
        print(f"sysgenid-async: simulate: {options.script}: no such file", file=sys.stderr)
        return EXIT_USAGE
    device = SimulatedDevice(abi=None if options.abi == "auto" else options.abi)
    path = resolve_device_path(options.device)
    stop = threading.Event()

    def restores() -> None:
        while not stop.wait(options.restore_every):
            generation = device.bump()
            report = json.dumps({"simulated_restore": generation}) if options.json else (
                f"sysgenid-async: simulated restore: generation {generation}")
            print(report, file=sys.stderr, flush=True)

    saved_argv, saved_path, saved_dir = sys.argv, list(sys.path), os.environ.get(RUNTIME_DIR_VARIABLE)
    restorer = threading.Thread(target=restores, name="sysgenid-async simulate", daemon=True)
    # The script's restore watchers announce themselves in a registry of their own (unless
    # --runtime-dir names one): a simulation never answers the machine's prepare.
    with device.installed(path), tempfile.TemporaryDirectory(prefix="sysgenid-async-simulate-") as private:
        os.environ[RUNTIME_DIR_VARIABLE] = options.runtime_dir or private
        restorer.start()
        sys.argv = [options.script, *options.arguments]
        try:
            if options.as_module:
                sys.path.insert(0, os.getcwd())  # as python3 -m puts the working directory first
                runpy.run_module(options.script, run_name="__main__", alter_sys=True)
            else:
                # As python3 SCRIPT: the script's directory first on sys.path (a directory: itself).
                sys.path.insert(0, os.path.dirname(os.path.realpath(options.script))
                                if os.path.isfile(options.script) else os.path.realpath(options.script))
                runpy.run_path(options.script, run_name="__main__")
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_ERROR)
        finally:
            sys.argv = saved_argv
            sys.path[:] = saved_path
            if saved_dir is None:
                os.environ.pop(RUNTIME_DIR_VARIABLE, None)
            else:
                os.environ[RUNTIME_DIR_VARIABLE] = saved_dir
            stop.set()
            restorer.join()
    return EXIT_OK


