"""Peers that run in their own interpreter and venv (oban-py needs Python >= 3.12).

An :class:`IsolatedSystem` names a pinned requirement and the oldest Python it
runs on. On first use the harness finds such an interpreter, makes a venv for
the pin under the user's cache (``~/.cache/taskq-bench/venvs``) and pip
installs the pin there; later runs reuse it. Everything that imports the peer
runs in that interpreter: its schema install and its enqueue client (one
``python -m bench.peer_client`` subprocess driven over a pipe, one JSON line
per workload call) and its worker processes (``bench.peer_worker``). The
harness process only times the calls and reads the peer's tables with SQL.

The pipe adds one round trip and the JSON of the keys to each workload call
(a few ms on a 20,000-key call), nothing per job.
"""

from __future__ import annotations

import atexit
import fcntl
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from bench.system import Client, System, SystemUnavailable

BENCH_PACKAGE = Path(__file__).resolve().parent


def cache_dir() -> Path:
    """Where peer venvs live: ``$XDG_CACHE_HOME/taskq-bench`` (default ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "taskq-bench"


def python_version(python: str) -> tuple[int, int] | None:
    """``(major, minor)`` of interpreter ``python``, or None if it does not run."""
    try:
        done = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    major, minor = done.stdout.split()
    return int(major), int(minor)


def python_candidates(minimum: tuple[int, int]) -> list[str]:
    """Interpreters to try, best first: TASKQ_BENCH_PYTHON, this one, PATH, pyenv's."""
    names = [f"python{minimum[0]}.{minor}" for minor in range(minimum[1] + 4, minimum[1] - 1, -1)]
    pyenv = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3")), reverse=True)
    found = [os.environ.get("TASKQ_BENCH_PYTHON"), sys.executable, *map(shutil.which, names)]
    return list(dict.fromkeys(p for p in [*found, *pyenv] if p))


def find_python(minimum: tuple[int, int]) -> tuple[str, tuple[int, int]]:
    """The first candidate interpreter that runs and is at least ``minimum``."""
    for python in python_candidates(minimum):
        version = python_version(python)
        if version is not None and version >= minimum:
            return python, version
    wanted = ".".join(map(str, minimum))
    raise SystemUnavailable(f"no Python >= {wanted} found (set TASKQ_BENCH_PYTHON)")


def venv_python(requirement: str, minimum: tuple[int, int]) -> str:
    """The interpreter of a venv that has ``requirement`` installed; made on first use."""
    base, version = find_python(minimum)
    slug = requirement.replace("==", "-").replace(" ", "")
    venv = cache_dir() / "venvs" / f"{slug}-py{version[0]}{version[1]}"
    python = venv / "bin" / "python"
    ready = venv / ".installed"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two harness runs must not build one venv at once
        if not ready.exists():
            shutil.rmtree(venv, ignore_errors=True)
            steps = [
                [base, "-m", "venv", str(venv)],
                [str(python), "-m", "pip", "install", "-q", requirement],
            ]
            for step in steps:
                done = subprocess.run(step, capture_output=True, text=True)
                if done.returncode != 0:
                    tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
                    raise SystemUnavailable(f"{' '.join(step[2:4])} failed: {' '.join(tail)}")
            ready.write_text(requirement + "\n")
    return str(python)


_bench_path: str | None = None


def bench_pythonpath() -> str:
    """A directory holding only ``bench`` (a link to this package), for PYTHONPATH.

    The peer's interpreter must import the adapters but not this venv's
    site-packages (compiled for another Python), so the worktree itself is not
    put on its path.
    """
    global _bench_path
    if _bench_path is None or not Path(_bench_path).exists():
        _bench_path = tempfile.mkdtemp(prefix="taskq_bench_path_")
        atexit.register(shutil.rmtree, _bench_path, True)
        os.symlink(BENCH_PACKAGE, Path(_bench_path) / "bench")
    return _bench_path


class RemoteClient:
    """The harness's face of a ``bench.peer_client`` subprocess: one JSON line each way."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        try:
            self.call("open")
        except BaseException:
            self.close()
            raise

    def call(self, op: str, **args) -> dict:
        """Send one command; its reply (raises what the peer raised)."""
        self.popen.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.popen.stdin.flush()
        line = self.popen.stdout.readline()
        if not line:
            raise RuntimeError(f"peer client exited ({self.popen.wait()}) during {op}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"peer client {op}: {reply['error']}")
        return reply

    def enqueue_single(self, keys: Sequence[str]) -> None:
        """One job per call, in the peer's interpreter."""
        self.call("single", keys=list(keys))

    def enqueue_batch(self, keys: Sequence[str], batch: int) -> None:
        """Jobs ``batch`` per call, in the peer's interpreter."""
        self.call("batch", keys=list(keys), batch=batch)

    def enqueue_paced(self, keys: Sequence[str], gap: float) -> list[float]:
        """One job per call, ``gap`` apart; the commit times the peer noted."""
        return self.call("paced", keys=list(keys), gap=gap)["committed"]

    def close(self) -> None:
        """Close the peer's client and wait for its process."""
        try:
            if self.popen.poll() is None:
                self.call("close")
        finally:
            self.popen.stdin.close()
            self.popen.wait(30)
            self.popen.stdout.close()


class IsolatedSystem(System):
    """A peer in its own venv; subclasses give the pin and the in-venv parts.

    ``local_install`` and ``local_client`` run inside the peer's interpreter
    (through ``bench.peer_client``); the module's ``serve`` runs its workers.
    """

    requirement = ""
    min_python = (3, 11)
    python: str | None = None

    def prepare(self) -> None:
        """Find or build the venv (raises SystemUnavailable when it cannot)."""
        self.python = venv_python(self.requirement, self.min_python)

    def local_install(self, url: str) -> None:
        """Create the schema (runs in the peer's venv)."""
        raise NotImplementedError

    def local_client(self, url: str) -> AbstractContextManager[Client]:
        """The in-process client (runs in the peer's venv)."""
        raise NotImplementedError

    def spec(self) -> str:
        """``module:Class`` of this system, for the subprocess entry points."""
        return f"{type(self).__module__}:{type(self).__name__}"

    def env(self) -> dict[str, str]:
        """The environment of the peer's processes: this bench package on the path."""
        return {**os.environ, "PYTHONPATH": bench_pythonpath(), "PYTHONUNBUFFERED": "1"}

    def install(self, url: str) -> None:
        """``local_install`` in the peer's interpreter."""
        if self.python is None:
            self.prepare()
        command = [self.python, "-m", "bench.peer_client", self.spec(), url, "--install"]
        subprocess.run(command, check=True, env=self.env())

    @contextmanager
    def client(self, url: str) -> Iterator[Client]:
        """A :class:`RemoteClient` over ``local_client`` in the peer's interpreter."""
        command = [self.python, "-m", "bench.peer_client", self.spec(), url]
        client = RemoteClient(command, self.env())
        try:
            yield client
        finally:
            client.close()

    def worker_commands(self, url: str, procs: int, record: Path) -> list[list[str]]:
        """``procs`` ``bench.peer_worker`` processes in the peer's interpreter."""
        module = type(self).__module__
        return [
            [self.python, "-m", "bench.peer_worker", module, url, f"{record}.{i}"]
            for i in range(procs)
        ]

    def worker_env(self, url: str, record: Path) -> dict[str, str]:
        """This bench package on the path, nothing of the harness's venv."""
        return {"PYTHONPATH": bench_pythonpath()}
