"""The one error hierarchy of unifork: every error it raises on purpose is
a UniforkError, whose message is one line a user can act on; an error
that wraps another keeps it as its cause (`raise ... from err`)."""
from __future__ import annotations


class UniforkError(Exception):
    """Base of every error unifork raises on purpose."""


class ConfigError(UniforkError):
    """A UNIFORK_* setting (or the option that sets it) has a bad value."""


class UsageError(ConfigError):
    """A command-line option has a bad value (exit status 2, as for a
    program that cannot run)."""


class BadProgram(UniforkError):
    """The program cannot run as a unikernel: not an ELF, wrong machine,
    dynamically linked, too big for the VM's memory..."""


class ExecError(UniforkError):
    """An execve (or the job's first program) that cannot run: (code) is
    the errno Linux would give (ENOENT, EACCES, ENOEXEC...)."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code, self.why = code, why


class VMError(UniforkError):
    """QEMU could not be started, or stopped in a way we did not ask for."""


class TransferError(UniforkError):
    """A fork stream broke the protocol, failed, or could not prove the
    cluster's secret."""


class ClusterError(UniforkError):
    """The cluster cannot do what was asked: Redis out of reach, a worker
    that cannot register, a job that is not there."""


class Unreachable(ClusterError):
    """Redis cannot be reached."""


class UnknownJob(ClusterError):
    """No job has that id."""


class AgentError(ClusterError):
    """`unifork worker` cannot serve: its name is held, its options are bad."""


class Superseded(ClusterError):
    """This run of a job is not the job's run: another has it, delivered
    twice or taken over while this one stalled (its result is dropped)."""


class InventoryError(UsageError):
    """The Ansible inventory `unifork cluster` reads is missing, not YAML,
    or lacks what it needs (a broker, a KVM host, a plain value)."""


class RemoteError(ClusterError):
    """A host of the inventory cannot be reached over SSH, or a command
    run there failed."""
