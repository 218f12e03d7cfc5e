"""Model-written code runs only in a sandboxed subprocess, never in the trainer's process.

The sandbox (Linux namespaces through util-linux's `unshare`, no extra package):
- a new network namespace with no interfaces: no network at all;
- a new mount namespace in which the whole filesystem is read-only but for a throw-away working
  directory, with fresh empty tmpfs over /tmp, /var/tmp and /dev/shm (discarded at exit);
- a new PID namespace, killed with its first process;
- resource limits: CPU seconds, address space, file size (which also bounds the captured
  output: stdout and stderr go to files in the working directory), open files and processes;
- as root, the code runs as `nobody`, so that the process limit binds and nothing root-owned is
  writable; as another user, inside a user namespace;
- a wall-clock timeout, after which the whole process group is killed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Runs inside the new namespaces, before the untrusted code: mounts, limits, identity, then exec.
_BOOT = r"""
import os, resource, subprocess, sys
work, cpu_s, memory, file_bytes, processes = sys.argv[1], *map(int, sys.argv[2:6])
def mount(*args):
    subprocess.run(["mount", *args], check=True, stderr=subprocess.DEVNULL)
mount("--bind", "/", "/")  # first: later mounts go on top of the read-only root, not under it
mount("-o", "remount,bind,ro", "/")
for scratch in ("/tmp", "/var/tmp", "/dev/shm"):
    if os.path.isdir(scratch):
        mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", scratch)
mount("--bind", work, work)
mount("-o", "remount,bind,rw", work)  # a bind of a read-only mount starts read-only
for limit, value in ((resource.RLIMIT_CPU, cpu_s), (resource.RLIMIT_AS, memory), (resource.RLIMIT_FSIZE, file_bytes),
                     (resource.RLIMIT_NPROC, processes), (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(limit, (value, value))
os.chdir(work)
if os.getuid() == 0 and os.environ.get("SANDBOX_UID"):
    os.setgroups([])
    os.setgid(int(os.environ["SANDBOX_UID"]))
    os.setuid(int(os.environ["SANDBOX_UID"]))
stdin = os.open("stdin.txt", os.O_RDONLY)
stdout = os.open("stdout.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
stderr = os.open("stderr.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
    os.dup2(fd, target)
python = os.environ["SANDBOX_PYTHON"]
os.execv(python, [python, "-I", "-S", "main.py"])
"""

NOBODY = 65534


@dataclass(frozen=True)
class SandboxLimits:
    """Args:
    cpu_s: CPU seconds before the code is killed.
    wall_s: wall-clock seconds before the whole sandbox is killed (sleeping code uses no CPU).
    memory_mb: address-space limit.
    output_bytes: most bytes kept of stdout, and of stderr (the files cannot grow past it).
    processes: most processes (a fork bomb stops there).
    """

    cpu_s: int = 5
    wall_s: float = 10.0
    memory_mb: int = 512
    output_bytes: int = 65536
    processes: int = 16


@dataclass(frozen=True)
class ExecutionResult:
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool


def sandbox_available() -> str | None:
    """None where the sandbox can run here, else why not."""
    if not sys.platform.startswith("linux"):
        return "the code sandbox needs Linux namespaces"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "the code sandbox needs util-linux's unshare and mount"
    return None


def run_sandboxed(code: str, stdin: str = "", limits: SandboxLimits | None = None) -> ExecutionResult:
    """Run Python `code` in the sandbox; return its exit status and (bounded) output."""
    limits = limits or SandboxLimits()
    reason = sandbox_available()
    if reason:
        raise RuntimeError(reason)
    root = Path(tempfile.gettempdir()) if os.geteuid() != 0 else Path("/var/lib/lit_posttrain-sandbox")
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=root))
    try:
        (work / "main.py").write_text(code)
        (work / "stdin.txt").write_text(stdin)
        as_root = os.geteuid() == 0
        if as_root:
            os.chmod(root, 0o711)
            os.chown(work, NOBODY, NOBODY)
        # /tmp is replaced inside the sandbox, so the working directory must live elsewhere for root;
        # other users cannot write outside /tmp and home, and get a user namespace instead.
        namespaces = ["--net", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private"]
        if not as_root:
            namespaces = ["--user", "--map-root-user", *namespaces]
        command = [
            "unshare", *namespaces, sys.executable, "-I", "-S", "-c", _BOOT, str(work),
            str(limits.cpu_s), str(limits.memory_mb * 2**20), str(limits.output_bytes), str(limits.processes),
        ]  # fmt: skip
        # As nobody, the code cannot reach an interpreter under /root (pyenv, a root venv): it gets
        # the system's Python, which it can read.
        python = (shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") if as_root else None) or sys.executable
        env = {"PATH": "/usr/bin:/bin", "SANDBOX_UID": str(NOBODY) if as_root else "", "SANDBOX_PYTHON": python}
        process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        timed_out = False
        try:
            returncode = process.wait(timeout=limits.wall_s)
        except subprocess.TimeoutExpired:
            timed_out, returncode = True, None
            os.killpg(process.pid, 9)
            process.wait()
        return ExecutionResult(
            returncode, _read(work / "stdout.txt", limits.output_bytes), _read(work / "stderr.txt", limits.output_bytes), timed_out
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _read(path: Path, limit: int) -> str:
    return path.read_bytes()[:limit].decode("utf-8", "replace") if path.exists() else ""


_CODE_BLOCK = re.compile(r"```(?:python|py)?\n(.*?)```", re.S)


@dataclass(frozen=True)
class CodeOutputMatch:
    """Reward 1.0 when the completion's program, run in the sandbox, prints the answer.

    The program is the last fenced code block of the completion (or the whole completion when it
    has none); its stdout, stripped, must equal the answer, stripped.

    Args:
        limits: the sandbox's CPU, wall-clock, memory, output and process limits.
    """

    limits: SandboxLimits = SandboxLimits()

    def __call__(self, completion: str, answer: str) -> float:
        blocks = _CODE_BLOCK.findall(completion)
        result = run_sandboxed(blocks[-1] if blocks else completion, limits=self.limits)
        return float(result.returncode == 0 and result.stdout.strip() == answer.strip())
