"""The `unifork` command.

Imports stay lazy: `unifork run` must start QEMU within milliseconds, so
nothing heavy (asyncio, Celery, Redis) is imported before it has.
"""
from __future__ import annotations

import sys


def _env_pair(s: str) -> str:
    import argparse
    if "=" not in s or s.startswith("="):
        raise argparse.ArgumentTypeError(f"expected K=V, got {s!r}")
    return s


def parser():
    """The full command line (argparse), for help and for errors."""
    import argparse
    p = argparse.ArgumentParser(prog="unifork",
                                description="Run multi-process programs as unikernel VMs.")
    p.add_argument("--version", action=_version_action(), nargs=0,
                   help="print unifork's version (and git commit) and exit")
    sub = p.add_subparsers(dest="command", required=True)
    _run_parser(sub)

    with_redis = _with_redis(sub)
    _worker_parser(with_redis("worker", help="run this KVM host's worker (Celery) and host agent"))
    _submit_parser(with_redis("submit", help="submit a job to the cluster; prints its id"))
    ps = with_redis("ps", help="a job's process tree (or the recent jobs)")
    ps.add_argument("job", nargs="?", metavar="JOB")
    lg = with_redis("logs", help="a job's output so far")
    lg.add_argument("job", metavar="JOB")
    ho = with_redis("hosts", help="the cluster's hosts: slots used and free, heartbeat age")
    ho.add_argument("--json", action="store_true", help="as a JSON list")
    cn = with_redis("cancel", help="stop a job")
    cn.add_argument("job", metavar="JOB")
    fe = with_redis("fetch", help="the files a job gave back (its --output), into a directory")
    fe.add_argument("job", metavar="JOB")
    fe.add_argument("paths", nargs="*", metavar="GUEST_PATH")
    fe.add_argument("--out", default=".", metavar="DIR", help="where they go (default .)")
    dr = with_redis("drain",
                    help="make a host take no new jobs or forks; its running ones finish")
    dr.add_argument("name", metavar="NAME")
    ud = with_redis("undrain", help="make a drained host take jobs and forks again")
    ud.add_argument("name", metavar="NAME")
    _cluster_parser(sub)
    return p


def _with_redis(sub):
    """A maker of subcommands that talk to the cluster's Redis (--redis)."""
    def with_redis(name: str, **kw):
        c = sub.add_parser(name, **kw)
        c.add_argument("--redis", metavar="URL", help="the cluster's Redis (default "
                       "$UNIFORK_REDIS_URL or redis://127.0.0.1:6379/0)")
        return c
    return with_redis


def _worker_parser(w) -> None:
    w.add_argument("--host-name", metavar="NAME",
                   help="this worker's name (default $UNIFORK_HOST_NAME, else the node name)")
    w.add_argument("--slots", type=int, metavar="N",
                   help="VMs this host runs (default $UNIFORK_WORKER_SLOTS)")
    w.add_argument("--advertise", metavar="ADDR", help="the address other hosts reach this "
                   "one at (default $UNIFORK_WORKER_ADVERTISE)")
    w.add_argument("--fork-ports", metavar="LO-HI", type=_port_range,
                   help="TCP ports for forks arriving from other hosts (default: any)")
    w.add_argument("--bridge-ports", metavar="LO-HI", type=_port_range,
                   help="UDP ports for pipes to other hosts (default: any)")
    w.add_argument("--files-ports", metavar="LO-HI", type=_port_range,
                   help="TCP ports of jobs' file servers, for their processes on other "
                   "hosts (default: any)")
    _driver_option(w)


def _submit_parser(s) -> None:
    import argparse
    s.add_argument("--wait", action="store_true", help="print its output, exit with its status")
    s.add_argument("--follow", action="store_true",
                   help="stream its output and its processes as they fork and exit")
    s.add_argument("--env", action="append", type=_env_pair, default=[], metavar="K=V")
    s.add_argument("--mem", type=int, default=128, metavar="MIB")
    s.add_argument("--max-procs", type=int, default=64, metavar="N")
    s.add_argument("--timeout", type=float, default=None, metavar="S")
    s.add_argument("--input", action="append", default=[], metavar="HOST_PATH[:GUEST_PATH]",
                   help="a file or directory for the job's tree (repeatable; default "
                   "GUEST_PATH /BASENAME); PROGRAM is found there if it is not a file here")
    s.add_argument("--workdir", default="/", metavar="GUEST_DIR",
                   help="pid 1's working directory in the tree (default /)")
    s.add_argument("--output", action="append", default=[], metavar="GLOB",
                   help="files of the tree the job gives back as it ends (repeatable; "
                   "`unifork fetch` gets them; with --wait, written into --out)")
    s.add_argument("--out", default=None, metavar="DIR",
                   help="with --wait: where the --output files go (default: not written)")
    s.add_argument("--fork-wait", type=float, default=None, metavar="S",
                   help="how long a fork waits for a free slot in the cluster before it "
                   "fails with EAGAIN (default: the worker's UNIFORK_FORK_WAIT, 5 s)")
    s.add_argument("program", metavar="PROGRAM")
    s.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")


def _cluster_parser(sub) -> None:
    """`unifork cluster ACTION --inventory FILE`: the KVM hosts over SSH."""
    c = sub.add_parser("cluster", help="the inventory's KVM hosts over SSH: status, drain, "
                       "undrain, logs, restart",
                       description="Operate the KVM hosts of an Ansible inventory over SSH.")
    acts = c.add_subparsers(dest="action", required=True)

    def action(name: str, help: str, host: bool = True):
        a = acts.add_parser(name, help=help)
        if host:
            a.add_argument("host", metavar="HOST", help="a host of the inventory's kvm_hosts")
        a.add_argument("--inventory", "-i", required=True, metavar="FILE",
                       help="the Ansible inventory (YAML)")
        a.add_argument("--connect-timeout", type=float, default=5.0, metavar="S",
                       help="seconds to wait for a host's SSH (default 5)")
        return a
    action("status", "each host's worker, slots, load and version, side by side", host=False)
    action("drain", "run `unifork drain` on the host: it takes no new jobs or forks")
    action("undrain", "run `unifork undrain` on the host: it takes them again")
    lg = action("logs", "the last lines of the host's worker log")
    lg.add_argument("-n", "--lines", type=int, default=100, metavar="N",
                    help="how many (default 100)")
    lg.add_argument("--follow", "-f", action="store_true", help="then stream it (^C stops)")
    rs = action("restart", "restart the host's worker and wait until it is back")
    rs.add_argument("--wait", type=float, default=60.0, metavar="S",
                    help="how long to wait for it in `unifork hosts` (default 60)")


def version() -> str:
    """`unifork VERSION`, and `(git COMMIT)` if the source is a git checkout."""
    import os
    import subprocess
    from importlib import metadata
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        text = f"unifork {metadata.version('unifork')}"
    except metadata.PackageNotFoundError:
        text = "unifork (not installed)"
    if os.path.exists(os.path.join(root, ".git")):
        try:
            commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = ""
        if commit:
            text += f" (git {commit})"
    return text


def _version_action():
    import argparse

    class Version(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(version())
            parser.exit()
    return Version


def _run_parser(sub) -> None:
    import argparse
    r = sub.add_parser("run", help="run a static x86-64 Linux program in a VM on this machine",
                       description="Run PROGRAM as a unikernel VM here, with no broker. "
                       "Exits with the program's status (128+N when killed by signal N).")
    r.add_argument("--mem", type=int, default=128, metavar="MIB",
                   help="VM memory in MiB (even, 16..2048; default 128)")
    r.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="stop the VM after S seconds (exit status 124)")
    r.add_argument("--max-procs", type=int, default=64, metavar="N",
                   help="the most processes (VMs) the job may have at once; past it "
                   "fork fails with EAGAIN (default 64)")
    r.add_argument("--env", action="append", type=_env_pair, default=[], metavar="K=V",
                   help="an environment variable for the program (repeatable); "
                   "the program gets only these")
    r.add_argument("--volume", action="append", default=[], metavar="HOST_DIR:GUEST_DIR[:ro]",
                   help="put HOST_DIR in the job's file tree at GUEST_DIR (repeatable; "
                   "GUEST_DIR may be /); without one, the tree is a fresh empty directory")
    r.add_argument("--workdir", default="/", metavar="GUEST_DIR",
                   help="pid 1's working directory in the tree (default /)")
    _driver_option(r)
    r.add_argument("program", metavar="PROGRAM")
    r.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")


def _driver_option(p) -> None:
    p.add_argument("--driver", choices=("qemu", "libvirt"), default=None,
                   help="what runs the VMs: qemu (QEMU started directly; the default, "
                   "or $UNIFORK_DRIVER) or libvirt (a transient libvirt domain each)")


def _port_range(text: str) -> str:
    import argparse
    lo, _, hi = text.partition("-")
    if not (lo.isdigit() and hi.isdigit() and 0 < int(lo) <= int(hi) < 65536):
        raise argparse.ArgumentTypeError(f"{text!r} is not a port range LO-HI")
    return text


def _fast_run_args(argv: list[str]) -> dict | None:
    """Parse `run [--mem N] [--timeout S] [--env K=V]... [--volume V]...
    [--workdir D] [--driver qemu|libvirt] PROGRAM [ARGS...]`
    without argparse (14 ms to import here); None sends the words to
    argparse, which explains what is wrong or prints the help."""
    opts: dict = {"mem": 128, "timeout": None, "env": [], "max_procs": 64, "volume": [],
                  "workdir": "/", "driver": None}
    i = 1
    while i < len(argv) and argv[i].startswith("--"):
        name, eq, value = argv[i].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                return None
            value, i = argv[i + 1], i + 1
        try:
            if name == "--mem":
                opts["mem"] = int(value)
            elif name == "--timeout":
                opts["timeout"] = float(value)
            elif name == "--max-procs":
                opts["max_procs"] = int(value)
            elif name == "--env" and "=" in value and not value.startswith("="):
                opts["env"].append(value)
            elif name == "--volume":
                opts["volume"].append(value)
            elif name == "--workdir":
                opts["workdir"] = value
            elif name == "--driver" and value in ("qemu", "libvirt"):
                opts["driver"] = value
            else:
                return None
        except ValueError:
            return None
        i += 1
    if i >= len(argv) or argv[i].startswith("-"):
        return None
    opts["program"], opts["args"] = argv[i], argv[i + 1:]
    return opts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    fast = _fast_run_args(argv) if argv[:1] == ["run"] else None
    if fast is None:
        args = parser().parse_args(argv)
        fast = vars(args)
    if fast.get("command", "run") == "run":
        from workers.proc.run import RunRequest, main_run
        if fast["driver"] is not None:
            from workers import config
            from workers.errors import UniforkError
            try:
                config.override(driver=fast["driver"])
            except UniforkError as err:     # another knob of the environment
                print(f"unifork: {err}", file=sys.stderr)
                return 2
        return main_run(RunRequest(fast["program"], fast["args"], fast["env"], fast["mem"],
                                   fast["timeout"], max_procs=fast["max_procs"],
                                   volumes=fast["volume"], workdir=fast["workdir"]))
    if fast["command"] == "cluster":        # (no Redis here: SSH to the hosts)
        from broker.ops.commands import main as cluster_main
        return cluster_main(argparse_ns(fast))
    from broker import commands
    return commands.main(argparse_ns(fast))


def argparse_ns(d: dict):
    import argparse
    return argparse.Namespace(**d)


def entry() -> None:
    """The console script: run, flush, and leave without the interpreter's
    finalization (a few ms that `unifork run` is measured on); every VM,
    file and socket is already closed by then."""
    import os
    try:
        rc = main()
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except KeyboardInterrupt:
        rc = 130
    except BrokenPipeError:         # `unifork ps | head`: the reader has gone
        os._exit(141)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        rc = 141
    os._exit(rc)


if __name__ == "__main__":
    entry()
