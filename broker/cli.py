"""The `unifork` command.

Imports stay lazy: `unifork run` must start QEMU within milliseconds, so
nothing heavy (asyncio, Celery, Redis) is imported before it has.
"""
from __future__ import annotations

import argparse
import sys


def _env_pair(s: str) -> str:
    if "=" not in s or s.startswith("="):
        raise argparse.ArgumentTypeError(f"expected K=V, got {s!r}")
    return s


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unifork",
                                description="Run multi-process programs as unikernel VMs.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a static x86-64 Linux program in a VM on this machine",
                       description="Run PROGRAM as a unikernel VM here, with no broker. "
                       "Exits with the program's status (128+N when killed by signal N).")
    r.add_argument("--mem", type=int, default=128, metavar="MIB",
                   help="VM memory in MiB (even, 16..2048; default 128)")
    r.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="stop the VM after S seconds (exit status 124)")
    r.add_argument("--env", action="append", type=_env_pair, default=[], metavar="K=V",
                   help="an environment variable for the program (repeatable); "
                   "the program gets only these")
    r.add_argument("program", metavar="PROGRAM")
    r.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "run":
        from workers.run import RunRequest, main_run
        return main_run(RunRequest(args.program, args.args, args.env, args.mem, args.timeout))
    return 2


if __name__ == "__main__":
    sys.exit(main())
