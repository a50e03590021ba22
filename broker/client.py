"""The client API: submit a job to the cluster and follow it.

    job = submit("guest/build/examples/primes.musl", ["100000", "4"])
    status = job.wait(timeout=60)
    print(job.stdout.decode(), job.processes())

The job is a Celery task (broker.app.RUN_JOB) on the shared queue; plain
Celery client code can send the same task (see README).
"""
from __future__ import annotations

import base64
import time
import uuid

from workers import abi
from workers.vm import elf
from workers.vm.layout import Layout

from broker import state
from broker.app import JOBS_QUEUE, RUN_JOB, app
from broker.keys import JobStatus
from workers.errors import UnknownJob

DONE = {JobStatus.FINISHED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value}


class Job:
    """A submitted job, read back from Redis."""

    def __init__(self, r, job_id: str) -> None:
        self.r, self.id = r, job_id

    def info(self) -> dict:
        info = state.job_info(self.r, self.id)
        if info is None:
            raise UnknownJob(f"no job {self.id}")
        return info

    @property
    def status(self) -> str:
        return self.info()["status"]

    def wait(self, timeout: float | None = None) -> int:
        """Wait until the job ends; its exit status.

        :raise TimeoutError: when (timeout) seconds pass first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.info()["status"] not in DONE:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} still {self.status} after {timeout} s")
            time.sleep(0.05)
        return self.exit_status

    @property
    def exit_status(self) -> int | None:
        v = self.info().get("exit_status")
        return None if v is None else int(v)

    @property
    def stdout(self) -> bytes:
        return b"".join(state.output(self.r, self.id, "out"))

    @property
    def stderr(self) -> bytes:
        return b"".join(state.output(self.r, self.id, "err"))

    def processes(self) -> dict[int, dict]:
        """pid -> {ppid, host, state, wstatus}."""
        return state.procs(self.r, self.id)

    def cancel(self) -> None:
        state.set_job(self.r, self.id, cancel=1)
        app.control.revoke(self.id, terminate=True, signal="SIGTERM")


def connect():
    return state.connect(app.conf.broker_url)


def submit(program: str, args: list[str] | tuple = (), env: list[str] | tuple = (),
           stdin: bytes = b"", mem_mib: int = 128, max_procs: int = 64,
           timeout: float | None = None, fork_wait: float | None = None,
           inputs: list[str] | tuple = (), workdir: str = "/",
           outputs: list[str] | tuple = ()) -> Job:
    """Validate (program), store it by content hash, queue the job; with
    (inputs) (HOST_PATH[:GUEST_PATH]), its tree, the program is found
    there if it is not a file here.  (outputs): globs of the tree's files
    the job gives back when it ends (fetch()).

    :raise workers.errors.BadProgram: the program cannot run (nothing is queued).
    :raise workers.errors.UsageError: bad inputs, or more than UNIFORK_INPUT_MAX.
    :raise state.Unreachable: Redis cannot be reached.
    """
    import os
    from broker import inputs as files
    from workers import config
    kwargs: dict = {"name": program, "args": list(args), "env": list(env),
                    "stdin": base64.b64encode(stdin).decode(), "mem_mib": mem_mib,
                    "max_procs": max_procs, "timeout": timeout, "fork_wait": fork_wait,
                    "workdir": workdir, "outputs": list(outputs)}
    archive = files.pack_inputs(list(inputs), config.get().input_max) if inputs else None
    data = None
    if not files.in_inputs(program, list(inputs), workdir):
        data = _program(program, mem_mib)
    r = connect()
    if data is not None:
        kwargs["image"] = state.put_image(r, data)
    else:
        kwargs["path"] = program
    if archive is not None:
        kwargs["inputs"] = state.put_image(r, archive)
    job_id = str(uuid.uuid4())
    state.new_job(r, job_id, program, list(args))
    app.send_task(RUN_JOB, task_id=job_id, queue=JOBS_QUEUE, kwargs=kwargs)
    return Job(r, job_id)


def _program(program: str, mem_mib: int) -> bytes:
    try:
        with open(program, "rb") as f:
            data = f.read()
    except OSError as err:
        from workers.errors import BadProgram
        raise BadProgram(f"{program}: {err.strerror}") from err
    elf.parse(program, data, abi.PIE_BASE, Layout(mem_mib << 20).mmap_top)
    return data


def fetch(job_id: str, paths: list[str], out: str) -> list[str]:
    """Files of job (job_id), written below directory (out); the guest
    paths written.  While it runs: (paths) (all of it if none) from its
    tree; once it has ended: from what its tree held then, if still kept
    (UNIFORK_TREE_KEEP), else from its outputs, at or below (paths).

    :raise UnknownJob: no such job, or no outputs.
    :raise TransferError: a running job's tree cannot be reached.
    """
    from broker import inputs as files
    j = job(job_id)
    info = j.info()
    if info.get("status") not in DONE and info.get("files"):
        from broker.cluster.link import cluster_secret
        from workers.files.remote import fetch as from_tree
        data = from_tree(info["files"], cluster_secret(j.r), job_id, paths)
        return files.extract(data, out)
    kept = state.kept_tree(j.r, job_id)
    if kept is not None:
        return _only(files.extract(kept, out, paths or None), paths, job_id)
    sha = info.get("outputs")
    if not sha:
        raise UnknownJob(f"job {job_id} gave back no files (its outputs: submit --output), "
                         "and its tree is no longer kept")
    data = state.get_image(j.r, sha)
    if data is None:
        raise UnknownJob(f"the outputs of job {job_id} are no longer kept")
    return _only(files.extract(data, out, paths or None), paths, job_id)


def _only(got: list[str], paths: list[str], job_id: str) -> list[str]:
    if paths and not got:
        raise UnknownJob(f"job {job_id} kept none of {' '.join(paths)}")
    return got


def job(job_id: str) -> Job:
    j = Job(connect(), job_id)
    j.info()
    return j
