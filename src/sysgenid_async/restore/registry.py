"""The machine's watcher registry: which processes run a restore watcher, and how far each is.

Every restore watcher announces itself in a runtime directory with one small JSON file,
``<pid>.json``, beside its control socket ``<pid>.sock`` (see :mod:`.control`):

- root: ``/run/sysgenid-async/``; other users: ``$XDG_RUNTIME_DIR/sysgenid-async/``;
  ``$SYSGENID_ASYNC_RUNTIME_DIR`` or an explicit path overrides both;
- the directory belongs to the user and is private (mode 0700); anything else is refused
  with :class:`RegistryPermissionError`, since the control sockets in it accept ``prepare``.

An entry names its process by pid *and* the process's start time (``/proc/<pid>/stat``),
so the entry of a process that died, or whose pid was reused, is known stale and ignored.
The registry says what each process reported; the device stays the source of truth for
the generation (readers compare the entries with it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import os
import stat
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import SysGenIDError

__all__ = [
    "ENTRY_LIMIT",
    "RUNTIME_DIR_VARIABLE",
    "Registry",
    "RegistryError",
    "RegistryPermissionError",
    "WatcherEntry",
    "WatcherState",
    "process_start_time",
    "runtime_dir",
    "service_name",
]

#: The largest entry file read; a bigger one is not ours.
ENTRY_LIMIT = 64 * 1024
#: The environment variable that names the registry directory.
RUNTIME_DIR_VARIABLE = "SYSGENID_ASYNC_RUNTIME_DIR"


class RegistryError(SysGenIDError):
    """The registry directory cannot be found or used."""


class RegistryPermissionError(RegistryError, PermissionError):
    """The registry directory is not private to this user (owner, mode, or a symlink)."""


class WatcherState(str, enum.Enum):
    """What a process's hooks are doing, as its entry says (the values are the JSON's strings)."""

    #: caught up with the generation it acknowledged
    READY = "ready"
    #: running its restore hooks for a new generation
    RESTORING = "restoring"
    #: a restore hook failed; retrying per its policy
    FAILED = "failed"
    #: running its before-snapshot hooks
    PREPARING = "preparing"
    #: before-snapshot hooks done; waiting for a snapshot, a resume or a restore
    PREPARED = "prepared"
    #: running its resume hooks
    RESUMING = "resuming"

    def __str__(self) -> str:  # the value, as enum.StrEnum (3.11+) gives it
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


@dataclass(frozen=True)
class WatcherEntry:
    """One process's announcement."""

    pid: int
    #: the process's start time in clock ticks since boot: with the pid, it names the process
    start_time: int
    #: given to the watcher, or the program's name
    service: str
    #: the last generation this process acknowledged to the kernel (None: none yet)
    acknowledged: int | None
    #: a :class:`WatcherState` value
    state: str
    #: the restore hook that failed last (None when the last pass succeeded)
    failing_hook: str | None = None
    #: that hook's error, as text
    error: str | None = None
    #: the process's control socket
    socket: str = ""
    #: 0 for a process's first watcher; a process running several (one per hook registry) numbers the others
    instance: int = 0
    #: "up" while its control socket is served; "down" while the server is being started again
    control: str = "up"

    @property
    def name(self) -> str:
        """The stem of its files: ``<pid>``, or ``<pid>-<instance>``."""
        return entry_name(self.pid, self.instance)

    def to_json(self) -> str:
        # Not dataclasses.asdict: it deep-copies, and an entry is written twice per restore.
        return json.dumps({f.name: getattr(self, f.name) for f in _FIELDS}, sort_keys=True)

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> WatcherEntry:
        """Parse an entry; ``ValueError`` when a field is missing or of the wrong type."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if set(data) - set(fields) or not {"pid", "start_time", "service", "acknowledged", "state"} <= set(data):
            raise ValueError(f"not a watcher entry: fields {sorted(data)}")
        ints = ("pid", "start_time", "instance") if "instance" in data else ("pid", "start_time")
        for name in ints:
            if type(data[name]) is not int:
                raise ValueError(f"{name} must be an integer")
        if data["acknowledged"] is not None and type(data["acknowledged"]) is not int:
            raise ValueError("acknowledged must be an integer or null")
        for name in ("service", "state", "socket", "control"):
            if name in data and not isinstance(data[name], str):
                raise ValueError(f"{name} must be a string")
        for name in ("failing_hook", "error"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise ValueError(f"{name} must be a string or null")
        return cls(**data)  # type: ignore[arg-type]

    def late_for(self, generation: int) -> bool:
        """Whether this process has not yet acknowledged ``generation``."""
        return self.acknowledged != generation

    def summary(self) -> dict[str, object]:
        """Who it is and what its hooks are doing: what the CLI and the readiness channel report."""
        return {"pid": self.pid, "service": self.service, "state": self.state, "failing_hook": self.failing_hook,
                "error": self.error, "control": self.control}


_FIELDS = dataclasses.fields(WatcherEntry)


def entry_name(pid: int, instance: int = 0) -> str:
    return str(pid) if instance == 0 else f"{pid}-{instance}"


def runtime_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The registry directory: ``path``, ``$SYSGENID_ASYNC_RUNTIME_DIR``, then root's
    ``/run/sysgenid-async`` or the user's ``$XDG_RUNTIME_DIR/sysgenid-async``."""
    if path is not None and os.fspath(path) == "":
        raise RegistryError("the runtime directory path is empty")
    chosen = path if path is not None else os.environ.get(RUNTIME_DIR_VARIABLE) or None
    if chosen is not None:
        return Path(chosen)
    if os.geteuid() == 0:
        return Path("/run/sysgenid-async")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if not xdg:
        raise RegistryError(f"no runtime directory: XDG_RUNTIME_DIR is not set (set it, or {RUNTIME_DIR_VARIABLE})")
    return Path(xdg) / "sysgenid-async"


def process_start_time(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks since boot), or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    fields = text[text.rindex(b")") + 2 :].split()
    return int(fields[19])  # field 22 of proc(5): starttime


def service_name(given: str | None = None) -> str:
    """``given``, or the program's name from ``sys.argv`` (``python -m x``: ``x``)."""
    if given is not None:
        if not isinstance(given, str) or not given or len(given) > 200 or not given.isprintable():
            raise ValueError(f"a service name is 1 to 200 printable characters, not {given!r}")
        return given
    argv = [a for a in sys.argv if a] or [sys.executable or "python"]
    if argv[0] in ("-m", "-c") and len(argv) > 1:
        argv = argv[1:]
    return Path(argv[0]).name[:200] or "python"


class Registry:
    """A registry directory: announce, withdraw, list."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, create: bool = False) -> None:
        self.path = runtime_dir(path)
        self._check(create)

    def _check(self, create: bool) -> None:
        if create:
            try:
                self.path.mkdir(mode=0o700, parents=False)
            except FileExistsError:
                pass
            except FileNotFoundError:
                raise RegistryError(f"{self.path}: its parent directory does not exist") from None
            except PermissionError:
                raise RegistryPermissionError(f"{self.path}: cannot create the registry directory") from None
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            raise RegistryError(f"{self.path}: no registry directory (no restore watcher has run)") from None
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            raise RegistryPermissionError(f"{self.path}: not a directory (a symlink is refused)")
        if info.st_uid != os.geteuid():
            raise RegistryPermissionError(
                f"{self.path}: owned by uid {info.st_uid}, not by this user (uid {os.geteuid()})"
            )
        if info.st_mode & 0o077:
            raise RegistryPermissionError(
                f"{self.path}: mode {stat.S_IMODE(info.st_mode):04o} lets other users in; it must be 0700"
            )

    def entry_path(self, pid: int, instance: int = 0) -> Path:
        return self.path / f"{entry_name(pid, instance)}.json"

    def socket_path(self, pid: int, instance: int = 0) -> Path:
        return self.path / f"{entry_name(pid, instance)}.sock"

    def announce(self, entry: WatcherEntry) -> None:
        """Write ``entry`` atomically (readers never see half of one): a temporary file of
        its own (only this watcher writes it), renamed over the entry."""
        temporary = self.path / f".{entry.name}.tmp"
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                                 0o600)
            try:
                os.write(descriptor, entry.to_json().encode())
            finally:
                os.close(descriptor)
            os.replace(temporary, self.entry_path(entry.pid, entry.instance))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def withdraw(self, pid: int, instance: int = 0) -> None:
        """Remove the entry and the control socket of ``pid``'s watcher ``instance``."""
        for path in (self.entry_path(pid, instance), self.socket_path(pid, instance)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _read(self, path: Path) -> WatcherEntry | None:
        try:
            with open(path, "rb") as f:
                data = f.read(ENTRY_LIMIT + 1)
        except FileNotFoundError:  # withdrawn meanwhile
            return None
        if len(data) > ENTRY_LIMIT:
            return None
        try:
            parsed = json.loads(data)
            return WatcherEntry.from_mapping(parsed) if isinstance(parsed, dict) else None
        except (ValueError, TypeError):
            return None

    def scan(self) -> tuple[list[WatcherEntry], list[Path]]:
        """The entries of live processes, by pid; and the files that are stale (a dead
        process, a reused pid) or unreadable, which are ignored."""
        live: list[WatcherEntry] = []
        stale: list[Path] = []
        for path in sorted(self.path.glob("*.json")):
            entry = self._read(path)
            if (
                entry is None
                or path.name != f"{entry.name}.json"
                or process_start_time(entry.pid) != entry.start_time  # dead, or the pid was reused
            ):
                stale.append(path)
            else:
                live.append(entry)
        live.sort(key=lambda e: (e.pid, e.instance))
        return live, stale

    def entries(self) -> list[WatcherEntry]:
        """The entries of live processes, by pid."""
        return self.scan()[0]

    def prune(self) -> int:
        """Remove the stale entries (and their sockets); how many."""
        _, stale = self.scan()
        for path in stale:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            with contextlib.suppress(FileNotFoundError):
                path.with_suffix(".sock").unlink()
        return len(stale)

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """A lock file in the directory, held for the block; yields False if another holds it."""
        import fcntl

        descriptor = os.open(self.path / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(descriptor)
