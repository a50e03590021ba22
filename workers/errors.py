"""The one error hierarchy of unifork's host side."""
from __future__ import annotations


class UniforkError(Exception):
    """Base of every error unifork raises on purpose."""


class BadProgram(UniforkError):
    """The program cannot run as a unikernel: not an ELF, wrong machine,
    dynamically linked, too big for the VM's memory..."""


class VMError(UniforkError):
    """QEMU could not be started, or stopped in a way we did not ask for."""
