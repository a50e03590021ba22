"""An unmodified, real multi-process program: BusyBox (Debian's static
build).  Its shell forks for pipelines and subshells and re-runs its own
image for each applet; every process is a VM, and the output must be the
native run's.  Background jobs need signal handlers: ash's `wait` sleeps
in sigsuspend until its SIGCHLD handler runs."""
from __future__ import annotations

import shutil

import pytest

from conftest import native, status, unifork

BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="busybox-static is not installed "
                                "(make setup installs it)")

SCRIPTS = {
    "pipelines": "echo hello world | busybox tr a-z A-Z; busybox seq 1 200 | busybox sort -rn "
                 "| busybox head -3; busybox seq 1 1000 | busybox wc -l; "
                 "busybox seq 1 30000 | busybox cat | busybox cat | busybox md5sum; "
                 # more than a pipe holds, read late: cat's sendfile waits for room
                 "busybox seq 1 400000 | busybox cat | (busybox sleep 0.3; busybox md5sum)",
    "substitution": 'n=$(busybox seq 1 10 | busybox wc -l); echo "ten: $n"; '
                    'echo "nested: $(echo $(echo deep))"',
    "subshells": "(echo in a subshell; exit 7); echo status $?; "
                 "if busybox false; then echo no; else echo false is false; fi",
    "kill": "busybox sleep 30 & p=$!; kill -TERM $p; wait $p; echo killed status $?",
    "stdin": "while read line; do echo got $line; done",
    "background": "busybox sleep 0.2 & echo started; wait; echo done; "
                  "for i in 1 2 3; do (busybox sleep 0.1; exit $i) & done; wait; echo all done",
    "trap": 'trap "echo caught TERM" TERM; kill -TERM $$; echo after; '
            'trap "echo bye" EXIT; exit 3',
    "timeout": 'busybox timeout 1 busybox sleep 5; echo "timed out: $?"; '
               'busybox timeout 5 busybox true; echo "in time: $?"',
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_busybox_shell_matches_native(name):
    script = SCRIPTS[name]
    stdin = b"alpha\nbeta\n"
    want = native(BUSYBOX, "sh", "-c", script, input=stdin, env={"PATH": "/bin:/usr/bin"})
    got = unifork("run", "--env", "PATH=/bin:/usr/bin", BUSYBOX, "sh", "-c", script,
                  input=stdin, timeout=120)
    assert got.stdout == want.stdout, got.stderr.decode()
    assert status(got) == status(want)
    assert b"unsupported system call" not in got.stderr, got.stderr.decode()
