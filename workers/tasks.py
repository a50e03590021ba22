"""The Celery tasks that run on a KVM host.

unifork.run_job runs one job on this host: pid 1 from the program's image
(fetched from Redis by content hash, cached on disk), its forks as VMs on
this host (each takes one of the host's slots, counted in Redis), its
output streamed into Redis as it comes, its processes recorded there.
The task is acked late and idempotent: a job that already finished is not
run again when its task is delivered twice.
"""
from __future__ import annotations

import base64
import hashlib
import os
import tempfile
import threading

from broker import keys, state
from broker.app import RUN_JOB, app
from broker.keys import JobStatus

from .errors import BadProgram, UniforkError
from .run import RunRequest, run

IMAGE_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "unifork", "images")


def host_name() -> str:
    return os.environ.get("UNIFORK_HOST_NAME") or os.uname().nodename


class RedisSlots:
    """This host's slots as the cluster sees them (the host's hash in Redis)."""

    def __init__(self, r, host: str) -> None:
        self.r, self.host = r, host
        self.limit = int(r.hget(keys.host(host), "slots") or 0)

    def take(self) -> bool:
        return state.take_slot(self.r, self.host)

    def give(self) -> None:
        state.give_slot(self.r, self.host)


def cached_image(r, sha: str) -> str:
    """The path of image (sha) on this host, fetched from Redis once."""
    path = os.path.join(IMAGE_CACHE, sha)
    if os.path.exists(path):
        return path
    data = state.get_image(r, sha)
    if data is None or hashlib.sha256(data).hexdigest() != sha:
        raise BadProgram(f"image {sha} is not in Redis")
    os.makedirs(IMAGE_CACHE, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=IMAGE_CACHE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path


def _pump(fd: int, r, job_id: str, stream: str, sink: list[bytes]) -> None:
    """Copy a pipe into the job's output list in Redis, as it comes."""
    while chunk := os.read(fd, 65536):
        sink.append(chunk)
        state.append_output(r, job_id, stream, chunk)
    os.close(fd)


@app.task(name=RUN_JOB, bind=True)
def run_job(self, image: str | None = None, program: str | None = None, name: str = "program",
            args: list[str] | tuple = (), env: list[str] | tuple = (), stdin: str = "",
            mem_mib: int = 128, max_procs: int = 64, timeout: float | None = None) -> dict:
    """Run a job; returns {job, exit_status, stdout, stderr} (output in base64).

    (image) is the sha256 of a program stored in Redis, or (program) the
    program itself in base64; (name) is its argv[0], (args) the rest.
    """
    r = state.connect(app.conf.broker_url)
    job_id = self.request.id
    host = host_name()
    info = state.job_info(r, job_id)
    if info and info.get("status") in (JobStatus.FINISHED.value, JobStatus.FAILED.value,
                                       JobStatus.CANCELLED.value):
        return _result(r, job_id, info)         # delivered twice: already done
    if info is None:                            # sent by plain Celery client code
        state.new_job(r, job_id, name, list(args))
    state.set_job(r, job_id, status=JobStatus.RUNNING.value, host=host)
    out_sink: list[bytes] = []
    err_sink: list[bytes] = []
    try:
        if program is not None:
            image = state.put_image(r, base64.b64decode(program))
        if not image:
            raise BadProgram("run_job needs image (a sha256) or program (base64)")
        path = cached_image(r, image)
        stdin_f = tempfile.TemporaryFile()
        stdin_f.write(base64.b64decode(stdin))
        stdin_f.seek(0)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pumps = [threading.Thread(target=_pump, args=(out_r, r, job_id, "out", out_sink)),
                 threading.Thread(target=_pump, args=(err_r, r, job_id, "err", err_sink))]
        for t in pumps:
            t.start()

        def events(pid, ppid, pstate, wstatus):
            state.set_proc(r, job_id, pid, ppid=ppid, host=host, state=pstate, wstatus=wstatus)

        try:
            status = run(RunRequest(path, list(args), list(env), mem_mib, timeout,
                                    stdin=stdin_f.fileno(), stdout=out_w, stderr=err_w,
                                    max_procs=max_procs, name=name,
                                    slots=RedisSlots(r, host), events=events))
        finally:
            os.close(out_w)
            os.close(err_w)
            for t in pumps:
                t.join()
            stdin_f.close()
        final = JobStatus.FINISHED
    except BadProgram as err:
        status, final = 2, JobStatus.FAILED
        msg = f"unifork: {err}\n".encode()
        err_sink.append(msg)
        state.append_output(r, job_id, "err", msg)
    except UniforkError as err:
        status, final = 1, JobStatus.FAILED
        msg = f"unifork: {err}\n".encode()
        err_sink.append(msg)
        state.append_output(r, job_id, "err", msg)
    except Exception as err:
        # Not ours to explain: the job must not stay "running" for ever.
        state.append_output(r, job_id, "err", f"unifork: the job failed on {host}: {err}\n".encode())
        state.set_job(r, job_id, status=JobStatus.FAILED.value, exit_status=1)
        state.expire_job(r, job_id)
        raise
    if status == 143 and state.job_info(r, job_id).get("cancel") == "1":
        final = JobStatus.CANCELLED
    state.set_job(r, job_id, status=final.value, exit_status=status)
    state.expire_job(r, job_id)
    return {"job": job_id, "exit_status": status,
            "stdout": base64.b64encode(b"".join(out_sink)).decode(),
            "stderr": base64.b64encode(b"".join(err_sink)).decode()}


def _result(r, job_id: str, info: dict) -> dict:
    return {"job": job_id, "exit_status": int(info.get("exit_status", 1)),
            "stdout": base64.b64encode(b"".join(state.output(r, job_id, "out"))).decode(),
            "stderr": base64.b64encode(b"".join(state.output(r, job_id, "err"))).decode()}
