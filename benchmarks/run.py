#!/usr/bin/env python3
"""Run the benchmark suite on one device backend; print the table, write the JSON.

    python benchmarks/run.py --backend sim-v8                  # the simulator, here
    python benchmarks/run.py --backend kernel-v8 --kernel-module build/sysgenid.ko   # in the guest

``nox -s bench`` runs it on the simulator, then in the QEMU guest on the kernel module,
then draws the plots and the docs' table (benchmarks/report.py). Each benchmark runs in a
fresh interpreter, so none inherits another's threads, imports or memory.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import DeviceUnderTest, Results, to_json  # noqa: E402

BENCHMARKS = ["probe", "wakeup", "fanout", "quiescence", "edge_triggered", "footprint"]

FULL: dict[str, dict[str, Any]] = {
    "probe": {"rounds": 9, "number": 200_000},
    "wakeup": {"rounds": 7, "per_round": 30},
    "fanout": {"rounds": 5, "per_round": 3, "subscribers": 10_000, "scaling": [100, 1_000, 10_000]},
    "quiescence": {"rounds": 3, "per_round": 5, "counts": [8, 32, 128]},
    "edge_triggered": {"rounds": 4, "per_round": 10, "counts": [8, 128]},
    "footprint": {"rounds": 7, "handles": 400},
}
# A smoke run: every code path, tiny counts (the test suite runs this; its figures mean nothing).
QUICK: dict[str, dict[str, Any]] = {
    "probe": {"rounds": 2, "number": 2_000},
    "wakeup": {"rounds": 2, "per_round": 2},
    "fanout": {"rounds": 2, "per_round": 1, "subscribers": 200, "scaling": [20, 200]},
    "quiescence": {"rounds": 2, "per_round": 1, "counts": [2, 4]},
    "edge_triggered": {"rounds": 2, "per_round": 1, "counts": [2]},
    "footprint": {"rounds": 2, "handles": 20},
}


def run_one(name: str, backend: str, settings: dict[str, Any], build: Path) -> Results:
    """Run one benchmark in this process."""
    results = Results()
    device = DeviceUnderTest(backend)
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}")
    module = importlib.import_module(name)  # benchmarks/<name>.py, each with run(device, results, ...)
    extra = {"build": build} if name == "wakeup" else {}  # where it compiles the C floor
    with device.active():
        module.run(device, results, **extra, **settings)
    return results


def load_module(module: str, abi: str) -> None:
    name = subprocess.run(["modinfo", "-F", "name", module], capture_output=True, text=True, check=True).stdout.strip()
    if Path(f"/sys/module/{name}").exists():
        subprocess.run(["rmmod", name], check=True)
    params = [] if os.environ.get("SYSGENID_NO_ABI_PARAM") else [f"abi={abi[1:]}"]
    subprocess.run(["insmod", module, *params], check=True)


def _format(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    if unit == "bytes":
        return f"{value / 1024:.1f} KiB"
    return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"


def table(report: dict[str, Any]) -> str:
    """The figures and ratios as a plain-text table."""
    machine = report["machine"]
    lines = [
        f"backend {report['backend']} on {machine['place']}: Python {machine['python']}, "
        f"kernel {machine['kernel']}, {machine['cpus']} x {machine['cpu']}",
        f"{'benchmark':<16} {'case':<54} {'library':>22} {'baseline':>22} {'ratio (range)':>20} {'target':>7}  verdict",
    ]
    for c in report["comparisons"]:
        lib, base = c["library"], c["baseline"]
        verdict = {True: "met", False: "MISSED", None: ""}[c["met"]]
        lines.append(
            f"{c['benchmark']:<16} {c['case'][:54]:<54} "
            f"{_format(lib['median'], lib['unit']):>10} [{_format(lib['p90'], lib['unit']):>9}] "
            f"{_format(base['median'], base['unit']):>10} [{_format(base['p90'], base['unit']):>9}] "
            f"{c['ratio']:>6.2f} ({c['ratio_min']:.2f}-{c['ratio_max']:.2f}) "
            f"{'<= ' + format(c['target'], 'g') if c['target'] else '':>8}  {verdict}"
        )
    for m in report["measures"]:
        verdict = {True: "met", False: "MISSED", None: ""}[m["met"]]
        target = f"<= {_format(m['target'], m['unit'])}" if m["target"] else ""
        lines.append(
            f"{m['benchmark']:<16} {m['name'][:54]:<54} {_format(m['median'], m['unit']):>10} "
            f"[{_format(m['p90'], m['unit']):>9}] {'':>45} {target:>8}  {verdict}"
        )
    lines.append("figures: median [90th percentile]; ratio: median over rounds of library/baseline (range)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="sim-v8", choices=["sim-v4", "sim-v8", "kernel-v4", "kernel-v8"])
    parser.add_argument("--kernel-module", help="insmod this .ko first (inside the guest)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run whose figures mean nothing")
    parser.add_argument("--place", default="host", help="where this runs, for the record (host, QEMU guest)")
    parser.add_argument("--out", type=Path, default=Path("build/bench"), help="directory for <backend>.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    build = args.out / "bin"

    if args.child:  # one benchmark, in a fresh interpreter started below
        results = run_one(args.child, args.backend, settings[args.child], build)
        report = to_json(results, args.backend, args.place, {})
        args.child_output.write_text(json.dumps(report))
        return 0

    if args.kernel_module:
        load_module(args.kernel_module, args.backend.rsplit("-", 1)[1])
    names = args.only.split(",") if args.only else BENCHMARKS
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")
    args.out.mkdir(parents=True, exist_ok=True)
    merged = to_json(Results(), args.backend, args.place, {name: settings[name] for name in names})
    merged["quick"] = args.quick
    merged["seconds"] = {}
    for name in names:
        started = time.monotonic()
        print(f"[bench] {name} on {args.backend} ...", flush=True)
        with tempfile.TemporaryDirectory() as scratch:
            output = Path(scratch) / "result.json"
            subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--backend", args.backend, "--place", args.place,
                 "--out", str(args.out), "--child", name, "--child-output", str(output),
                 *(["--quick"] if args.quick else [])],
                check=True,
            )
            part = json.loads(output.read_text())
        for key in ("comparisons", "measures"):
            merged[key].extend(part[key])
        merged["series"].update(part["series"])
        merged["seconds"][name] = round(time.monotonic() - started, 1)
    destination = args.out / f"{args.backend}.json"
    destination.write_text(json.dumps(merged, indent=1) + "\n")
    print(table(merged))
    print(f"[bench] results: {destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
