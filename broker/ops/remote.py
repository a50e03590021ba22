"""Commands on a KVM host over SSH (Fabric), as the hosts' contract lays
the host out: the worker's service (systemd or supervisor, as the host
says), `{{prefix}}/venv/bin/unifork` run with worker.env's environment,
the worker's log.  A failure to reach the host, or a command that times
out, is a RemoteError naming the host.

Host keys: one in ~/.ssh/known_hosts must match; a host not there is
accepted (and not written there).
"""
from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass

from workers.errors import RemoteError

from broker.ops.inventory import Host

SERVICE = "unifork-worker"
COMMAND_TIMEOUT = 30.0          # seconds a command (but `logs --follow`) may take

# What `supervisorctl status` and `systemctl is-active` say, in one word.
_STATES = {"RUNNING": "running", "active": "running", "STOPPED": "stopped",
           "inactive": "stopped", "EXITED": "stopped", "FATAL": "failed", "failed": "failed",
           "STARTING": "starting", "BACKOFF": "starting", "activating": "starting",
           "STOPPING": "stopping", "deactivating": "stopping"}


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def q(word: str) -> str:
    return shlex.quote(word)


def service(host: Host, action: str) -> str:
    """The shell command that does (action) (status, restart, start, stop)
    to the worker's service: systemd if the host runs it, else supervisor."""
    systemd = f"systemctl is-active {SERVICE}" if action == "status" else \
        f"systemctl {action} {SERVICE}"
    supervisor = f"supervisorctl -c {q(host.etc + '/supervisord.conf')} {action} {SERVICE}"
    return f"if [ -d /run/systemd/system ]; then {systemd}; else {supervisor}; fi"


def service_state(said: str) -> str:
    """The service's state in one word, from what `service(host, "status")` printed."""
    words = said.split()
    if len(words) >= 2 and words[0] == SERVICE:         # supervisorctl: NAME STATE ...
        return _STATES.get(words[1], words[1].lower())
    if words and words[0] in _STATES:                   # systemctl is-active: STATE
        return _STATES[words[0]]
    if "no such process" in said:
        return f"no {SERVICE} in supervisord.conf"
    if "no such file" in said or "refused connection" in said:
        return "supervisord not running"
    return said.strip().splitlines()[0] if said.strip() else "unknown"


def with_worker_env(host: Host, command: str) -> str:
    """(command) run with {{etc}}/worker.env's variables exported; each
    KEY=VALUE line is taken as it is (no shell expansion of its value) and
    no value appears on a command line."""
    env = q(host.etc + "/worker.env")
    return (f"while IFS= read -r l || [ -n \"$l\" ]; do case $l in ''|'#'*) ;; "
            f"*) export \"$l\" ;; esac; done < {env} && {command}")


def unifork(host: Host, *args: str) -> str:
    """`unifork ARGS` on the host, with worker.env's environment."""
    return with_worker_env(host, " ".join(q(w) for w in (host.unifork, *args)))


class Remote:
    """An SSH connection to one host (opened on first use)."""

    def __init__(self, host: Host, connect_timeout: float) -> None:
        self.host, self.connect_timeout = host, connect_timeout
        self._conn = None

    def __enter__(self) -> "Remote":
        return self

    def __exit__(self, *exc) -> None:
        if self._conn is not None:
            self._conn.close()

    def _connection(self):
        if self._conn is None:
            from fabric import Connection
            h = self.host
            if h.key_file and not os.path.exists(h.key_file):
                raise RemoteError(f"{h.name}: its SSH key {h.key_file} "
                                  "(ansible_ssh_private_key_file) does not exist")
            kw = {"banner_timeout": self.connect_timeout, "auth_timeout": self.connect_timeout}
            if h.key_file:
                kw["key_filename"] = h.key_file
            self._conn = Connection(h.ssh_host, user=h.user, port=h.port, connect_kwargs=kw,
                                    connect_timeout=max(1, round(self.connect_timeout)))
            self._conn.client.load_system_host_keys()
        return self._conn

    def run(self, command: str, timeout: float | None = COMMAND_TIMEOUT,
            stream: bool = False) -> Result:
        """Run (command) on the host; its status and output.  With (stream),
        its output goes to ours as it comes (through a terminal there, so
        that ^C here stops it there).

        :raise RemoteError: the host cannot be reached, or (timeout) passed.
        """
        import paramiko
        from invoke.exceptions import CommandTimedOut
        try:
            conn = self._connection()
            if stream:
                got = conn.run(command, warn=True, pty=True, in_stream=False,
                               out_stream=sys.stdout, timeout=timeout)
            else:
                got = conn.run(command, warn=True, hide=True, in_stream=False, timeout=timeout)
        except CommandTimedOut as err:
            raise RemoteError(f"{self.where}: a command did not finish within "
                              f"{timeout:g} s") from err
        except (OSError, EOFError, paramiko.SSHException) as err:
            raise RemoteError(f"{self.where}: {self._why(err)}") from err
        return Result(got.exited, got.stdout, got.stderr)

    @property
    def where(self) -> str:
        return f"{self.host.name} ({self.host.address})"

    def _why(self, err: Exception) -> str:
        import socket

        import paramiko
        if isinstance(err, (socket.timeout, TimeoutError)) or "banner" in str(err):
            return f"no answer over SSH within {self.connect_timeout:g} s"
        if isinstance(err, paramiko.BadHostKeyException):
            return "its SSH host key is not the one in ~/.ssh/known_hosts"
        if isinstance(err, paramiko.AuthenticationException):
            return f"SSH refused the login as {self.host.user}: {err}"
        if isinstance(err, paramiko.SSHException):
            return f"SSH failed: {err}"
        if isinstance(err, OSError):
            return f"cannot connect over SSH: {err.strerror or err}"
        return f"SSH failed: {type(err).__name__}: {err}"
