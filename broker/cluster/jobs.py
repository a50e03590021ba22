"""A job's run on its home host: the body of the run_job task.

pid 1 runs from the program's image (fetched from Redis by content hash,
cached on disk), its forks as VMs on this host while it has free slots
(counted in Redis), or on other hosts through its link (sending.py); its
output is streamed into Redis as it comes, its processes recorded there.
A job delivered twice is run once: a finished one's result is returned
again, one that runs elsewhere is left to that run (state.claim_job).
"""
from __future__ import annotations

import base64
import dataclasses
import logging
import os
import shutil
import tempfile
import threading

from broker import state
from broker.cluster.host import Here
from broker.keys import JobStatus

from workers import config
from workers.errors import BadProgram, Superseded, UniforkError
from workers.proc.run import RunRequest, run

log = logging.getLogger("unifork.worker")


@dataclasses.dataclass
class JobRequest:
    """A run_job task's arguments: (image), the sha256 of a program stored
    in Redis, or (program), the program itself in base64; (name), its
    argv[0], (args) the rest; (stdin) in base64.  A fork that finds no free
    slot in the cluster for (fork_wait) seconds returns EAGAIN."""

    image: str | None = None
    program: str | None = None
    name: str = "program"
    args: list[str] = dataclasses.field(default_factory=list)
    env: list[str] = dataclasses.field(default_factory=list)
    stdin: str = ""
    mem_mib: int = 128
    max_procs: int = 64
    timeout: float | None = None
    fork_wait: float | None = None
    # The job's tree: (inputs) the sha256 of an archive stored in Redis
    # (broker/inputs.py), (files) guest path -> content in base64; (path)
    # the program's path in it (instead of image); (outputs) globs of the
    # files given back; (workdir) pid 1's working directory.
    inputs: str | None = None
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    path: str | None = None
    outputs: list[str] = dataclasses.field(default_factory=list)
    workdir: str = "/"

    def __post_init__(self) -> None:
        self.args, self.env = list(self.args), list(self.env)
        self.outputs = list(self.outputs)

    def stored(self) -> dict:
        """What Redis keeps, to run the job again if its host is lost."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "program"}


def run_job(here: Here, job_id: str, req: JobRequest) -> dict:
    """Run job (job_id); returns {job, exit_status, stdout, stderr} (output
    in base64), with every host's output.

    :raise Superseded: delivered twice, and the job runs elsewhere, or
        another run took it over while this one ran.
    """
    r = here.r
    if state.job_info(r, job_id) is None:       # sent by plain Celery client code
        state.new_job(r, job_id, req.name, req.args)
    if req.program is not None:                 # kept by content, like a submitted one
        req.image, req.program = state.put_image(r, base64.b64decode(req.program)), None
    if req.files:                               # so are its files
        from broker import inputs
        req.inputs = state.put_image(r, inputs.pack_files(
            {p: base64.b64decode(d) for p, d in req.files.items()}))
        req.files = {}
    holder = (here.host, here.incarnation)
    claim = state.claim_job(r, job_id, *holder, req.stored())
    if claim == "done":                         # delivered twice: already done
        return result(r, job_id, state.job_info(r, job_id))
    if claim == "busy":                         # delivered twice: it runs elsewhere
        raise Superseded(job_id)
    try:
        status, final = _run(here, job_id, req, holder), JobStatus.FINISHED
    except UniforkError as err:
        status = 2 if isinstance(err, BadProgram) else 1
        final = JobStatus.FAILED
        state.append_output(r, job_id, "err", f"unifork: {err}\n".encode(), holder)
    except Exception as err:
        # Not ours to explain: the job must not stay "running" for ever.
        state.append_output(r, job_id, "err", f"unifork: the job failed on {here.host}: "
                            f"{err}\n".encode(), holder)
        state.end_job(r, job_id, holder, JobStatus.FAILED.value, 1)
        raise
    if status == 143 and state.job_info(r, job_id).get("cancel") == "1":
        final = JobStatus.CANCELLED
    if not state.end_job(r, job_id, holder, final.value, status):
        # This run was taken for lost (its worker stalled) and the job ran
        # again elsewhere: that run's result is the job's, not ours.
        log.warning("job %s: another run took it over; this run's result is dropped", job_id)
        raise Superseded(job_id)
    return result(r, job_id, {"exit_status": status})


def _run(here: Here, job_id: str, req: JobRequest, holder: tuple[str, str]) -> int:
    """pid 1 and its subtree here, until pid 1 ends: its exit status."""
    from broker.cluster.link import Link
    if not (req.image or req.path):
        raise BadProgram("run_job needs image (a sha256), program (base64) or path "
                         "(in its files)")
    r = here.r
    path = here.image_path(req.image) if req.image else req.path
    fork_wait = config.get().fork_wait if req.fork_wait is None else req.fork_wait
    tree = _tree(r, req)
    with tempfile.TemporaryFile() as stdin, _Output(r, job_id, holder) as out:
        stdin.write(base64.b64decode(req.stdin))
        stdin.seek(0)
        link = Link(here.url, job_id, here.host, 1, req.image or "", fork_wait, here.address,
                    holder)
        try:
            return run(RunRequest(path, req.args, req.env, req.mem_mib, req.timeout,
                                  stdin=stdin.fileno(), stdout=out.fds["out"],
                                  stderr=out.fds["err"], max_procs=req.max_procs,
                                  name=req.name, slots=here.slots, link=link,
                                  events=state.proc_recorder(r, job_id, *holder, holder),
                                  volumes=[f"{tree}:/"], workdir=req.workdir))
        finally:
            link.close()
            _give_back(r, job_id, req, tree)


def _tree(r, req: JobRequest) -> str:
    """A fresh directory for the job's tree, with its inputs in it."""
    from broker import inputs
    tree = tempfile.mkdtemp(prefix="unifork-job-")
    if req.inputs:
        data = state.get_image(r, req.inputs)
        if data is None:
            shutil.rmtree(tree, ignore_errors=True)
            raise BadProgram(f"the job's inputs {req.inputs} are not in Redis")
        inputs.extract(data, tree)
    return tree


def _give_back(r, job_id: str, req: JobRequest, tree: str) -> None:
    """Keep the files of (tree) that (req.outputs) names with the job, and
    all of them for UNIFORK_TREE_KEEP seconds (unless they are more than
    UNIFORK_INPUT_MAX); remove the tree."""
    from broker import inputs
    cfg = config.get()
    try:
        if req.outputs:
            archive, _ = inputs.collect(tree, req.outputs, cfg.input_max)
            if archive:
                state.set_job(r, job_id, outputs=state.put_image(r, archive))
        if cfg.tree_keep:
            try:
                archive, _ = inputs.collect(tree, ["**"], cfg.input_max, hidden=True)
                state.keep_tree(r, job_id, archive, cfg.tree_keep)
            except UniforkError as err:
                log.info("job %s: its tree is not kept: %s", job_id, err)
    finally:
        shutil.rmtree(tree, ignore_errors=True)


class _Output:
    """Pipes for the job's stdout and stderr here, each copied into the
    job's output in Redis as it comes, while this run holds the job (a
    superseded run's output is read and dropped)."""

    def __init__(self, r, job_id: str, holder: tuple[str, str]) -> None:
        self.r, self.job_id, self.holder = r, job_id, holder
        self.fds: dict[str, int] = {}
        self.pumps = []
        for stream in ("out", "err"):
            rfd, self.fds[stream] = os.pipe()
            self.pumps.append(threading.Thread(target=self._pump, args=(rfd, stream)))
        for t in self.pumps:
            t.start()

    def _pump(self, fd: int, stream: str) -> None:
        while chunk := os.read(fd, 65536):
            state.append_output(self.r, self.job_id, stream, chunk, self.holder)
        os.close(fd)

    def __enter__(self) -> _Output:
        return self

    def __exit__(self, *_) -> None:
        for fd in self.fds.values():
            os.close(fd)
        for t in self.pumps:
            t.join()


def result(r, job_id: str, info: dict) -> dict:
    """The job's result: its exit status, all of its output so far, and
    the files of its tree its outputs named (guest path -> base64)."""
    out = {"job": job_id, "exit_status": int(info.get("exit_status", 1)),
           "stdout": base64.b64encode(b"".join(state.output(r, job_id, "out"))).decode(),
           "stderr": base64.b64encode(b"".join(state.output(r, job_id, "err"))).decode()}
    sha = (state.job_info(r, job_id) or {}).get("outputs")
    data = state.get_image(r, sha) if sha else None
    if data:
        from broker import inputs
        out["files"] = {p: base64.b64encode(d).decode()
                        for p, d in inputs.read_files(data).items()}
    return out
