"""Debian's bash-static, unmodified: scripts of builtins fork for every
command substitution, subshell, pipeline stage and background job; each
process is a VM (most of them recycled), and the output must be the
native run's."""
from __future__ import annotations

import shutil

import pytest

from conftest import native, status, unifork

BASH = shutil.which("bash-static")
pytestmark = pytest.mark.skipif(BASH is None, reason="bash-static is not installed "
                                "(make setup installs it)")

SCRIPTS = {
    "substitution-loop": 'for ((i=0;i<300;i++)); do x=$(echo $i); done; echo "last: $x"; '
                         'echo "nested: $(echo $(echo $(echo deep)))"',
    "pipelines": 'echo one two three | { read a b c; echo "$c $b $a"; }; '
                 'set -o pipefail; (exit 3) | true; echo "pipefail: $?"; '
                 'true | (exit 4) | true; echo "PIPESTATUS: ${PIPESTATUS[*]}"',
    "subshells-and-background": '(echo in a subshell; exit 7); echo "status $?"; '
                                'for i in 1 2 3 4; do (exit $i) & pids+=($!); done; '
                                'for p in "${pids[@]}"; do wait $p; s=$((s + $?)); done; '
                                'echo "sum of statuses: $s"',
    "traps-and-signals": 'trap "echo caught USR1" USR1; kill -USR1 $$; '
                         '( trap "echo child caught TERM; exit 9" TERM; kill -TERM $BASHPID; '
                         'echo not here ) ; echo "child status $?"; '
                         'trap "echo bye" EXIT',
    "coproc-and-here-documents": 'coproc UP { read l; echo "${l^^}"; }; echo quiet >&"${UP[1]}"; '
                                 'read -r back <&"${UP[0]}"; wait; echo "coproc said $back"; '
                                 'while read -r w; do echo "<$w>"; done <<EOF\nalpha\nbeta\nEOF',
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_bash_matches_native(name):
    script = SCRIPTS[name]
    want = native(BASH, "-c", script, env={})
    got = unifork("run", BASH, "-c", script, timeout=120)
    assert got.stdout == want.stdout, got.stderr.decode()
    assert status(got) == status(want)
