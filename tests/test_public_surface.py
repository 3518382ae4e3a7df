"""The public surface: the core in ``sysgenid_async``, the restore layer in its submodule; no
name is exported twice, and no module of the package is an alias of another."""

from __future__ import annotations

import subprocess
import sys

import pytest

import sysgenid_async
import sysgenid_async.restore

CORE = {
    "Abi", "AsyncSysGenID", "BlockingSysGenID", "DeviceClosedError", "DeviceNotFoundError",
    "DevicePermissionError", "StaleGenerationError", "SysGenIDError", "UnsupportedByAbiError", "WaitResult",
    "__version__", "open_sysgenid", "watch", "watch_blocking",
}


def test_the_core_is_small() -> None:
    assert set(sysgenid_async.__all__) == CORE
    for name in CORE:
        assert getattr(sysgenid_async, name) is not None


def test_the_restore_layer_exports_what_it_lists() -> None:
    for name in sysgenid_async.restore.__all__:
        assert getattr(sysgenid_async.restore, name) is not None
    assert not CORE & set(sysgenid_async.restore.__all__), "no name in both places"


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'on_restore'"):
        sysgenid_async.on_restore  # type: ignore[attr-defined] # noqa: B018
    with pytest.raises(ImportError):
        from sysgenid_async import Device  # type: ignore[attr-defined] # noqa: F401


def test_every_module_imports_without_a_warning() -> None:
    """Importing every module of the package, warnings as errors: none is deprecated."""
    script = (
        "import warnings, pkgutil, importlib\n"
        "warnings.simplefilter('error')\n"
        "import sysgenid_async\n"
        "for info in pkgutil.walk_packages(sysgenid_async.__path__, 'sysgenid_async.'):\n"
        "    if info.name != 'sysgenid_async.__main__':\n"
        "        importlib.import_module(info.name)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
