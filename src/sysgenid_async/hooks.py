"""Deprecated: moved to :mod:`sysgenid_async.restore.hooks`; this name goes in the next release."""

from typing import TYPE_CHECKING

from ._moved import alias_module

if TYPE_CHECKING:  # what type checkers see: the names of the new module
    from .restore.hooks import *  # noqa: F403

alias_module(__name__, "sysgenid_async.restore.hooks")
