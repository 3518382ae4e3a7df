"""The public surface: the core in ``sysgenid_async``, the restore layer in its submodule, and
the names that moved still importable from their old places for one release, with a warning."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

import sysgenid_async
import sysgenid_async.restore
from sysgenid_async._moved import MOVED_NAMES

CORE = {
    "Abi", "AsyncSysGenID", "BlockingSysGenID", "DeviceClosedError", "DeviceNotFoundError",
    "DevicePermissionError", "StaleGenerationError", "SysGenIDError", "UnsupportedByAbiError", "WaitResult",
    "__version__", "open_sysgenid", "watch", "watch_blocking",
}
OLD_MODULES = {
    "sysgenid_async.hooks": "sysgenid_async.restore.hooks",
    "sysgenid_async.gate": "sysgenid_async.restore.gate",
    "sysgenid_async.bound": "sysgenid_async.restore.bound",
    "sysgenid_async.reseed": "sysgenid_async.restore.reseed",
    "sysgenid_async.orchestrator": "sysgenid_async.restore.orchestrator",
}


def test_the_core_is_small() -> None:
    assert set(sysgenid_async.__all__) == CORE
    for name in CORE:
        assert getattr(sysgenid_async, name) is not None


def test_the_restore_layer_exports_what_it_lists() -> None:
    for name in sysgenid_async.restore.__all__:
        assert getattr(sysgenid_async.restore, name) is not None
    assert not CORE & set(sysgenid_async.restore.__all__), "no name in both places"


@pytest.mark.parametrize("name", sorted(MOVED_NAMES))
def test_a_moved_name_still_imports_with_a_warning(name: str) -> None:
    new_home = importlib.import_module(MOVED_NAMES[name])
    message = rf"sysgenid_async\.{name} has moved: import it from {MOVED_NAMES[name]}"
    with pytest.warns(DeprecationWarning, match=message):
        value = getattr(sysgenid_async, name)
    assert value is getattr(new_home, name)


def test_the_warning_points_at_the_importing_line() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from sysgenid_async import on_restore  # noqa: F401
    # ``from ... import`` looks the name up twice (hasattr, then getattr): both point here.
    assert caught and {w.filename for w in caught} == {__file__}


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'on_restart'"):
        sysgenid_async.on_restart  # noqa: B018
    with pytest.raises(ImportError):
        from sysgenid_async import on_restart  # noqa: F401


@pytest.mark.parametrize(("old", "new"), sorted(OLD_MODULES.items()))
def test_an_old_module_path_is_the_new_module_with_a_warning(old: str, new: str) -> None:
    """In a fresh interpreter: the old module is imported once per process."""
    script = (
        "import importlib, sys, warnings\n"
        "warnings.simplefilter('error')\n"
        f"new = importlib.import_module({new!r})\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        f"    old = importlib.import_module({old!r})\n"
        "assert old is new, (old, new)\n"
        "print(caught[0].category.__name__, caught[0].message)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    expected = f"DeprecationWarning {old} has moved to {new} (the old module goes in the next release)"
    assert done.stdout.strip() == expected


def test_nothing_in_the_package_uses_an_old_name() -> None:
    """Importing every module of the package, as errors, raises no DeprecationWarning."""
    script = (
        "import warnings, pkgutil, importlib\n"
        "warnings.simplefilter('error')\n"
        "import sysgenid_async\n"
        "old = {'sysgenid_async.' + m for m in ('hooks', 'gate', 'bound', 'reseed', 'orchestrator', '_moved')}\n"
        "for info in pkgutil.walk_packages(sysgenid_async.__path__, 'sysgenid_async.'):\n"
        "    if info.name not in old and info.name != 'sysgenid_async.__main__':\n"
        "        importlib.import_module(info.name)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
