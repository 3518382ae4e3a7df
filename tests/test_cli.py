"""The command line, called as a function (and once as a real process)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends import Backend
from sysgenid_async import Abi, StaleGenerationError, __version__
from sysgenid_async.cli import _COMMANDS, EXIT_CODES, cli
from sysgenid_async.cli._options import build_parser
from sysgenid_async.device import Device
from sysgenid_async.testing import Quirk


@pytest.fixture
def keep_bumping(backend: Backend) -> Iterator[threading.Event]:
    """Bump every 50 ms until set: a watcher that starts late still sees a change."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(0.05):
            backend.bump()

    bumper = threading.Thread(target=run)
    bumper.start()
    yield stop
    stop.set()
    bumper.join()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("--version") == 0
    assert capsys.readouterr().out.strip() == f"sysgenid-async {__version__}"


def test_as_a_module() -> None:
    done = subprocess.run([sys.executable, "-m", "sysgenid_async", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and __version__ in done.stdout


def test_status(backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    new = backend.bump()
    assert cli("--device", backend.path, "status") == 0
    text = capsys.readouterr().out
    assert f"generation {new}" in text and f"abi {backend.abi.value}" in text
    assert cli("--device", backend.path, "status", "--json") == 0
    record = json.loads(capsys.readouterr().out)
    assert record["generation"] == new and record["abi"] == backend.abi.value
    assert record["outdated_watchers"] == (0 if backend.abi.value == "v4" else None)


def test_trigger(backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    start = backend.generation
    assert cli("--device", backend.path, "trigger") == 0
    assert capsys.readouterr().out.strip() == f"generation {(start + 1) % 2**32}"
    assert cli("--device", backend.path, "trigger", "--min", str(start + 100)) == 0
    assert backend.generation == start + 100


def test_wait_watchers(backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("--device", backend.path, "wait-watchers", "--timeout", "1") == 0
    with Device.open(backend.path) as laggard:
        new = backend.bump()
        assert cli("--device", backend.path, "wait-watchers", "--timeout", "0.1") == 3
        count = "1 watchers" if backend.abi is Abi.V4 else "watchers (v8 keeps no count)"
        assert capsys.readouterr().err.startswith(
            f"sysgenid-async: wait-watchers: timed out at generation {new} with {count} still outdated")
        assert cli("wait-watchers", "--device", backend.path, "--timeout", "0.1", "--json") == 3
        record = json.loads(capsys.readouterr().out)
        assert record == {"result": "timed-out", "generation": new,
                          "outdated_watchers": 1 if backend.abi is Abi.V4 else None}
        laggard.ack(new)
    assert cli("--device", backend.path, "wait-watchers", "--timeout", "5") == 0


# The conventions every command follows, as a table.
COMMANDS = ["status", "watch", "trigger", "wait-watchers", "selftest", "prepare", "resume", "wait-ready", "demo",
            "simulate"]
# What a command needs besides its options.
OPERANDS = {"simulate": ["script.py"]}


def test_the_table_lists_every_command() -> None:
    assert sorted(COMMANDS) == sorted(_COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_global_options_go_before_or_after_the_command_and_every_command_has_json(command: str) -> None:
    parser = build_parser()
    operands = OPERANDS.get(command, [])
    after = parser.parse_args([command, "--device", "D", "--abi", "v8", "--runtime-dir", "R", "--json", *operands])
    before = parser.parse_args(["--device", "D", "--abi", "v8", "--runtime-dir", "R", command, "--json", *operands])
    for options in (after, before):
        assert (options.device, options.abi, options.runtime_dir, options.json) == ("D", "v8", "R", True)
    defaults = parser.parse_args([command, *operands])
    assert (defaults.device, defaults.abi, defaults.runtime_dir, defaults.json) == (None, "auto", None, False)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_lists_every_exit_status(command: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(*([command] if command else []), "--help") == 0
    out = capsys.readouterr().out
    for status, meaning in EXIT_CODES.items():
        assert f"{status:>5}  {meaning}" in out


@pytest.mark.parametrize("args", [
    ["status"], ["trigger"], ["wait-watchers", "--timeout", "5"], ["selftest"], ["prepare"], ["resume"],
    ["wait-ready", "--timeout", "5"],
])
def test_json_output_is_json_on_every_line(
    backend: Backend, args: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    runtime = tempfile.mkdtemp(prefix="sgc-", dir="/tmp")
    try:
        assert cli(*args, "--device", backend.path, "--runtime-dir", runtime, "--json") == 0
    finally:
        shutil.rmtree(runtime)
    lines = capsys.readouterr().out.splitlines()
    assert lines or args[0] in ("prepare", "resume")  # with nobody registered, nothing to report
    for line in lines:
        json.loads(line) if args[0] != "selftest" else None
    if args[0] == "selftest":
        assert isinstance(json.loads("\n".join(lines)), list)


def test_demo_json_is_json_on_every_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("demo", "--json") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(isinstance(json.loads(line), str) for line in lines)


def test_watch_exec_timeout_kills_the_command_and_counts_as_a_failure(
    backend: Backend, keep_bumping: threading.Event, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The first run hangs (killed after 5 s: a failure, and with one attempt, no retry); the
    next change's run succeeds. (5 s: under emulation in the guest, Python alone can take a
    second to start.)"""
    mark = tmp_path / "ran once"
    script = "import os, sys, time; p = sys.argv[1]; os.path.exists(p) and sys.exit(0); open(p, 'w'); time.sleep(60)"
    started = time.monotonic()
    assert cli("watch", "--device", backend.path, "--exec", f"{sys.executable} -c \"{script}\" '{mark}'",
               "--exec-timeout", "5", "--max-attempts", "1", "--count", "2") == 0
    assert time.monotonic() - started < 55  # the 60 s run was killed
    err = capsys.readouterr().err
    assert "timed out after 5 s (attempt 1)" in err and "stays unacknowledged; no retries left" in err


def test_an_acknowledgement_ahead_of_the_device_says_so(backend: Backend) -> None:
    with Device.open(backend.path) as handle:
        ahead = (handle.generation + 5) % 2**32
        with pytest.raises(StaleGenerationError, match=f"has not reached {ahead}"):
            handle.ack(ahead)


def test_watch_acknowledges_each_change(
    backend: Backend, keep_bumping: threading.Event, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("--device", backend.path, "watch", "--count", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith("generation ") for line in lines)
    assert cli("--device", backend.path, "watch", "--count", "1", "--json") == 0
    record = json.loads(capsys.readouterr().out)
    assert isinstance(record["generation"], int) and isinstance(record["time"], float)
    assert cli("--device", backend.path, "watch", "--count", "2", "--no-ack") == 0


def test_watch_exec_passes_the_generation_without_a_shell(
    backend: Backend, keep_bumping: threading.Event, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    record = tmp_path / "generation; touch injected"
    script = "import os, sys; open(sys.argv[1], 'w').write(os.environ['SYSGENID_GENERATION'])"
    command = f"{sys.executable} -c \"{script}\" '{record}'"
    assert cli("--device", backend.path, "watch", "--count", "1", "--exec", command) == 0
    printed = capsys.readouterr().out.split()[1]
    assert record.read_text() == printed
    assert not (tmp_path / "injected").exists()


def test_watch_exec_failure_is_retried_and_holds_the_ack(
    backend: Backend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failing command does not end the watch: it is run again, and its generation stays
    unacknowledged (the CLI's file stays outdated) until the command succeeds."""
    log = tmp_path / "runs"
    command = f"sh -c 'echo $SYSGENID_GENERATION >> {log}; test $(wc -l < {log}) -ge 3'"
    result: list[int] = []
    watching = threading.Thread(target=lambda: result.append(cli(
        "--device", backend.path, "watch", "--exec", command, "--count", "1", "--retry-delay", "0.2",
    )))
    with Device.open(backend.path, watcher=False) as probe:
        opened = backend.open_files()
        watching.start()
        deadline = time.monotonic() + 60
        while backend.open_files() == opened and time.monotonic() < deadline:
            time.sleep(0.01)  # until the watch, which starts in the thread, has opened the device
        generation = backend.bump()  # one change: the watch sees it
        while not log.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert log.exists(), "the command never ran"
        if backend.abi.value == "v4":
            # after a failure, the CLI's own file is still outdated: an orchestrator sees it
            assert probe.outdated_watchers() >= 1 or len(log.read_text().split()) >= 3
        watching.join(60)
    assert not watching.is_alive() and result == [0]
    runs = log.read_text().split()
    assert len(runs) == 3 and {int(run) for run in runs} == {generation}
    err = capsys.readouterr().err
    assert err.count("stays unacknowledged") == 2 and "(attempt 1)" in err


def test_watch_count_stops_even_when_the_command_keeps_failing(
    backend: Backend, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--count counts changes, not successes: a command that always fails ends the watch after
    N changes, with exit 7 and the last one left unacknowledged; --max-attempts is every run."""
    log = tmp_path / "runs"
    command = f"sh -c 'echo run >> {log}; exit 1'"
    result: list[int] = []
    watching = threading.Thread(target=lambda: result.append(cli(
        "--device", backend.path, "watch", "--exec", command, "--count", "1", "--max-attempts", "2",
        "--retry-delay", "0.05",
    )))
    opened = backend.open_files()
    watching.start()
    deadline = time.monotonic() + 60
    while backend.open_files() == opened and time.monotonic() < deadline:
        time.sleep(0.01)  # until the watch has opened the device
    backend.bump()  # one change, which the command fails for every time
    watching.join(60)
    assert not watching.is_alive() and result == [7]
    err = capsys.readouterr().err
    assert err.count("exited with 1") == 2 and "(attempt 2)" in err and "no retries left" in err
    assert log.read_text().split() == ["run", "run"], "two attempts, as --max-attempts 2 says"


def test_watch_exec_of_a_missing_command(backend: Backend, keep_bumping: threading.Event,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("--device", backend.path, "watch", "--exec", "/nonexistent/command") == 7
    assert "command not found" in capsys.readouterr().err


def test_selftest(backend: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("--device", backend.path, "selftest") == 0
    table = capsys.readouterr().out
    assert "FAIL" not in table and "SKIP" in table
    assert cli("--device", backend.path, "selftest", "--allow-trigger", "--json") == 0
    results = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert all(r["status"] != "fail" for r in results.values())
    assert results["trigger, read, poll, caller-outdated wait, ack"]["status"] == "pass"
    root_only = Quirk.ROOT_ONLY_NODE in backend.quirks and backend.kernel  # the simulator has no node
    expected_warnings = {"who may open the node"} if root_only else set()
    if Quirk.SIGNED_COUNTER in backend.quirks:
        expected_warnings |= {"the counter is a u32 (after 2147483647 comes 2147483648)",
                              "a minimum of 2**31 or more is honoured"}
    if Quirk.RECOUNT_ALL_TRACKED in backend.quirks:
        expected_warnings.add("a trigger that changes nothing counts nobody as outdated")
    if Quirk.TRACKING_ANY_NONZERO in backend.quirks:
        expected_warnings.add("SET_WATCHER_TRACKING(2)")
    if Quirk.CALLER_USERNS_CAPABILITY in backend.quirks and backend.kernel:
        expected_warnings.add("a trigger from an unprivileged user namespace is refused")
    assert {name for name, r in results.items() if r["status"] == "warn"} == expected_warnings
    # which driver it is: our module says (in each flavour); a foreign one and the simulator do not
    assert results["driver"]["status"] == ("pass" if backend.kernel and not backend.spec.foreign else "skip")
    # the simulator lives in this process: the probe in a user namespace cannot open it
    userns = results["a trigger from an unprivileged user namespace is refused"]
    if backend.kernel:
        assert userns["status"] in ("pass", "warn")
    else:
        assert (userns["status"], userns["detail"]) == (
            "skip", "a simulated device lives in this process: a probe in another process cannot open it")
    assert results["ABI detected by the v4 query"]["detail"] == backend.abi.value
    # it leaves no watcher counted behind it (the stuck count it found, it cleared)
    probe = backend.open_raw(readonly=True, nonblock=True)
    try:
        assert probe.ioctl(backend.abi.wait_watchers_request, 10) == 0
    finally:
        probe.close()


@pytest.mark.kernel_only
@pytest.mark.stricter_choice("the device has a backend attribute that says what drives the generation")
def test_selftest_names_what_drives_the_generation(backend: Backend) -> None:
    from sysgenid_async.selftest import run_selftest

    row = {r.name: r for r in run_selftest(backend.path)}["VM generation backend"]
    assert row.status == "pass" and row.detail.startswith(("follows the hypervisor", "none", "disabled"))


def test_selftest_says_nothing_of_a_backend_on_the_simulator() -> None:
    from sysgenid_async.selftest import run_selftest
    from sysgenid_async.testing import SimulatedDevice

    with SimulatedDevice().installed("/dev/sysgenid-selftest", set_env=False):
        row = {r.name: r for r in run_selftest("/dev/sysgenid-selftest")}["VM generation backend"]
    assert (row.status, row.detail) == ("skip", "the driver does not say")


def test_demo_speaks_the_abi_asked_for_and_refuses_a_device(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("--abi", "v8", "demo") == 0
    assert "watchers (v8: not counted) outdated" in capsys.readouterr().out
    assert cli("--device", "/dev/sysgenid", "demo") == 2
    assert "--device does not apply" in capsys.readouterr().err


def test_selftest_runs_its_table_once_for_the_devices_abi(backend: Backend) -> None:
    """One row per check of the table that applies to the ABI, in table order; without
    --allow-trigger the checks that change the generation are skipped, and say why."""
    from sysgenid_async.selftest import _CHECKS, run_selftest

    results = run_selftest(backend.path)
    table = [check.name for check in _CHECKS if check.abi in (None, backend.abi)]
    names = [result.name for result in results]
    assert names[-len(table):] == table and len(set(names)) == len(names)
    trigger_rows = {check.name for check in _CHECKS if check.trigger}
    for result in results:
        if result.name in trigger_rows:
            assert (result.status, result.detail) == ("skip", "needs --allow-trigger (changes the generation)")


def test_selftest_skips_the_later_trigger_checks_when_the_round_trip_fails() -> None:
    from sysgenid_async.selftest import run_selftest
    from sysgenid_async.testing import SimulatedDevice

    with SimulatedDevice("v8", capabilities=frozenset()).installed("/dev/sysgenid-selftest", set_env=False):
        results = {r.name: r for r in run_selftest("/dev/sysgenid-selftest", allow_trigger=True)}
    round_trip = results["trigger, read, poll, caller-outdated wait, ack"]
    assert round_trip.status == "fail" and "CAP_CHECKPOINT_RESTORE" in round_trip.detail
    for name in ("the counter is a u32 (after 2147483647 comes 2147483648)", "a minimum of 2**31 or more is honoured",
                 "a trigger that changes nothing counts nobody as outdated",
                 "a trigger from an unprivileged user namespace is refused"):
        assert (results[name].status, results[name].detail) == ("skip", "the trigger round trip failed")


def test_selftest_fails_on_something_that_is_not_the_device(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("--device", "/dev/null", "selftest") == 6
    assert "FAIL" in capsys.readouterr().out


def test_selftest_on_a_missing_device_exits_as_documented(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("--device", "/nonexistent/sysgenid", "selftest") == 4
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("sysgenid-async: /nonexistent/sysgenid")


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--device", "/nonexistent/sysgenid", "status"], 4, "SYSGENID_DEVICE"),
        (["--device", "/nonexistent/sysgenid", "status"], 4, "run it on the simulator: 'sysgenid-async simulate"),
        (["--device", "/dev/null", "status"], 1, "not a sysgenid device"),
        (["trigger", "--min", "-1"], 2, "must be in 0..4294967295"),
        (["trigger", "--min", str(2**32)], 2, "must be in 0..4294967295"),
        (["trigger", "--min", "many"], 2, "not an integer"),
        (["wait-watchers", "--timeout", "-1"], 2, "must be a number of seconds, 0 or more: '-1'"),
        (["wait-watchers", "--timeout", "nan"], 2, "must be a number of seconds, 0 or more: 'nan'"),
        (["prepare", "--timeout", "-1"], 2, "must be a number of seconds, 0 or more: '-1'"),
        (["prepare", "--timeout", "nan"], 2, "must be a number of seconds, 0 or more: 'nan'"),
        (["simulate", "--restore-every", "nan", "x.py"], 2, "must be a number of seconds, 0 or more: 'nan'"),
        (["prepare", "--timeout", "0"], 2, "must be more than 0 seconds"),
        (["watch", "--retry-delay", "inf"], 2, "must be a finite number of seconds"),
        (["--device", "", "status"], 2, "the device path is empty"),
        (["watch", "--exec", 'echo "unterminated'], 2, "cannot split"),
        (["wait-ready", "--channel", "vsock:abc"], 2, "a vsock channel is vsock:CID:PORT"),
        (["simulate"], 2, "needs a SCRIPT to run"),
        (["watch", "--max-attempts", "0"], 2, "must be >= 1"),
        (["watch", "--count", "0"], 2, "must be >= 1"),
        (["watch", "--exec", ""], 2, "needs a command"),
        (["--abi", "v5", "status"], 2, "invalid choice"),
        (["frobnicate"], 2, "invalid choice"),
        ([], 2, "required"),
    ],
)
def test_errors_are_one_line_with_a_documented_status(
    args: list[str], status: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(*args) == status
    assert status in EXIT_CODES
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("demo") == 0
    out = capsys.readouterr().out
    assert "wait_watchers -> caught-up" in out and "demo complete" in out


SIMULATED_SCRIPT = """
import os
import sys
import anyio
from sysgenid_async import watch
from sysgenid_async.restore import restore_watcher
from sysgenid_async.restore.registry import Registry

async def main() -> None:
    async with restore_watcher() as watcher, watch() as changes:
        assert Registry().entries(), "announced in the simulation's own registry"
        async for generation in changes:
            print("restored:", generation, os.environ["SYSGENID_DEVICE"], sys.argv[1:])
            break
    if sys.argv[1:] == ["fail"]:
        sys.exit(3)

anyio.run(main)
"""


@pytest.mark.parametrize("json_output", [False, True], ids=["text", "json"])
def test_simulate_runs_a_script_on_a_restoring_simulator(
    json_output: bool, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "service.py"
    script.write_text(SIMULATED_SCRIPT)
    runtime = tempfile.mkdtemp(prefix="sgc-", dir="/tmp")
    try:
        json_flag = ["--json"] if json_output else []
        status = subprocess.run(
            [sys.executable, "-m", "sysgenid_async", "simulate", *json_flag, "--restore-every", "0.2", str(script),
             "x"],
            capture_output=True, text=True, timeout=60, env={**os.environ, "SYSGENID_ASYNC_RUNTIME_DIR": runtime},
        )
        assert status.returncode == 0, status.stderr
        assert status.stdout.startswith("restored: 1 /dev/sysgenid ['x']"), status.stdout
        first = status.stderr.splitlines()[0]
        assert json.loads(first) == {"simulated_restore": 1} if json_output else (
            first == "sysgenid-async: simulated restore: generation 1")
        assert os.listdir(runtime) == [], "the script announced itself elsewhere, in a registry of its own"
        failing = subprocess.run([sys.executable, "-m", "sysgenid_async", "simulate", "--restore-every", "0.2",
                                  str(script), "fail"], capture_output=True, text=True, timeout=60)
        assert failing.returncode == 3, failing.stderr
    finally:
        shutil.rmtree(runtime)


def test_simulate_runs_the_command_line_itself_as_a_module() -> None:
    done = subprocess.run([sys.executable, "-m", "sysgenid_async", "simulate", "--abi", "v8", "--restore-every", "0.2",
                           "-m", "sysgenid_async", "watch", "--json", "--count", "2"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["generation"] for line in done.stdout.splitlines()] == [1, 2]
    status = subprocess.run([sys.executable, "-m", "sysgenid_async", "simulate", "-m", "sysgenid_async", "status",
                             "--json"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and json.loads(status.stdout)["abi"] == "v4", status.stderr


@pytest.mark.parametrize("as_directory", [False, True])
def test_simulate_runs_a_script_as_python3_would(as_directory: bool, tmp_path: Path) -> None:
    """The script's directory first on sys.path (so its own modules import), __file__,
    sys.argv and __main__, as ``python3 SCRIPT``; a directory runs its __main__.py."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "helper.py").write_text("NAME = 'helper'\n")
    main = project / ("__main__.py" if as_directory else "main.py")
    main.write_text(
        "import sys, helper\n"
        "print(helper.NAME, __name__, __file__, sys.argv, sys.modules['__main__'].__file__ == __file__)\n"
    )
    target = project if as_directory else main
    done = subprocess.run([sys.executable, "-m", "sysgenid_async", "simulate", str(target), "a", "b"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    plain = subprocess.run([sys.executable, str(target), "a", "b"], capture_output=True, text=True, timeout=60,
                           cwd=tmp_path)
    assert done.returncode == 0 == plain.returncode, done.stderr
    assert done.stdout == plain.stdout
    assert done.stdout.startswith("helper __main__ ")


def test_simulate_refuses_a_missing_script_and_leaves_the_device_alone(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("simulate", "/nonexistent/script.py") == 2
    assert capsys.readouterr().err == "sysgenid-async: simulate: /nonexistent/script.py: no such file\n"
    assert cli("simulate", "--restore-every", "0", "x.py") == 2
    assert cli("simulate", "-m", "no_such_module_here") == 2
    assert capsys.readouterr().err.endswith("simulate: no module named no_such_module_here\n")
    assert cli("simulate", "/") == 2
    assert capsys.readouterr().err == "sysgenid-async: simulate: /: a directory with no __main__.py\n"
    assert "SYSGENID_SIMULATOR" not in os.environ
