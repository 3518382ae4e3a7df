"""How the suite treats a driver: ours, a flavour of ours, a named foreign driver, an unknown one.

The guest runs our module (and its flavours); a foreign module runs there only when someone
passes ``--module``. These tests check, on the host, what each kind of driver does to a test
marked ``stricter_choice``, ``breaks_on`` or ``with_quirk``.
"""

from __future__ import annotations

import pytest

from backends import BackendSpec
from conftest import _mark_for_driver
from sysgenid_async.testing import Flavour, Quirk
from sysgenid_async.uapi import Abi


class FakeItem:
    """The part of a pytest item that the marking reads and writes."""

    def __init__(self, *marks: pytest.MarkDecorator) -> None:
        self.marks = [mark.mark for mark in marks]

    def get_closest_marker(self, name: str) -> pytest.Mark | None:
        return next((mark for mark in self.marks if mark.name == name), None)

    def iter_markers(self, name: str) -> list[pytest.Mark]:
        return [mark for mark in self.marks if mark.name == name]

    def add_marker(self, marker: pytest.MarkDecorator) -> None:
        self.marks.append(marker.mark)


def _outcome(spec: BackendSpec, *marks: pytest.MarkDecorator) -> str:
    item = FakeItem(*marks)
    if not _mark_for_driver(item, spec):  # type: ignore[arg-type]
        return "deselected"
    skip = item.get_closest_marker("skip")
    if skip:
        return f"skip: {skip.kwargs['reason']}"
    xfail = item.get_closest_marker("xfail")
    if xfail:
        assert xfail.kwargs["strict"] is True
        return f"xfail: {xfail.kwargs['reason']}"
    return "run"


OURS = BackendSpec.parse("kernel-v8")
FLAVOUR = BackendSpec.parse("kernel-amazon-linux")
NAMED = BackendSpec.parse("kernel-v8", foreign_driver="amazon-linux")
UNKNOWN = BackendSpec.parse("kernel-v8", foreign_driver="unknown")


def test_backend_names() -> None:
    assert (OURS.abi, OURS.flavour, OURS.foreign) == (Abi.V8, Flavour.SYSGENID_ASYNC, False)
    assert (FLAVOUR.abi, FLAVOUR.flavour, FLAVOUR.foreign) == (Abi.V8, Flavour.AMAZON_LINUX, False)
    assert BackendSpec.parse("sim-v4-patch").abi is Abi.V4
    assert NAMED.quirks == Flavour.AMAZON_LINUX.quirks and NAMED.foreign
    assert UNKNOWN.flavour is None and UNKNOWN.quirks == frozenset()
    with pytest.raises(ValueError, match=r"not sim-\.\.\. or kernel-"):
        BackendSpec.parse("qemu-v4")


def test_a_stricter_choice_is_skipped_only_on_a_foreign_module() -> None:
    mark = pytest.mark.stricter_choice("the 0666 node")
    assert _outcome(OURS, mark) == _outcome(FLAVOUR, mark) == "run"
    assert _outcome(NAMED, mark) == _outcome(UNKNOWN, mark) == "skip: a choice of our module, not ABI: the 0666 node"


def test_a_known_quirk_makes_a_strict_expected_failure() -> None:
    mark = pytest.mark.breaks_on(Quirk.SIGNED_COUNTER)
    assert _outcome(OURS, mark) == _outcome(UNKNOWN, mark) == "run"
    assert _outcome(FLAVOUR, mark) == _outcome(NAMED, mark) == (
        f"xfail: amazon-linux: {Quirk.SIGNED_COUNTER.description}"
    )
    assert _outcome(BackendSpec.parse("sim-v4-patch"), pytest.mark.breaks_on(Quirk.TRACKING_ANY_NONZERO)) == "run"


def test_a_quirks_own_test_runs_only_where_the_driver_has_it() -> None:
    mark = pytest.mark.with_quirk(Quirk.TRACKING_ANY_NONZERO)
    assert _outcome(OURS, mark) == _outcome(UNKNOWN, mark) == "deselected"
    assert _outcome(FLAVOUR, mark) == _outcome(NAMED, mark) == "run"


def test_abi_and_flavour_selection() -> None:
    assert _outcome(FLAVOUR, pytest.mark.only_abi("v4")) == "deselected"
    assert _outcome(BackendSpec.parse("sim-v4-patch"), pytest.mark.only_abi("v4")) == "run"
    assert _outcome(FLAVOUR, pytest.mark.once_per_abi) == "deselected"
    assert _outcome(OURS, pytest.mark.once_per_abi) == _outcome(UNKNOWN, pytest.mark.once_per_abi) == "run"
