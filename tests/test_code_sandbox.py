"""Model-written code runs in a sandbox whose every limit holds."""

import os
import time
from pathlib import Path

import pytest

from lit_posttrain.rewards.code import CodeOutputMatch, SandboxLimits, run_sandboxed, sandbox_available

pytestmark = pytest.mark.skipif(sandbox_available() is not None, reason=str(sandbox_available()))
LIMITS = SandboxLimits(cpu_s=2, wall_s=5, memory_mb=256, output_bytes=1000, processes=8)
ROOT = Path(__file__).resolve().parents[1]


def test_ordinary_code_runs_and_may_write_in_its_own_directory():
    result = run_sandboxed("import sys\nopen('out.txt', 'w').write(sys.stdin.read())\nprint(open('out.txt').read())", stdin="42")
    assert (result.returncode, result.stdout, result.timed_out) == (0, "42\n", False)


def test_an_infinite_loop_is_stopped_by_the_cpu_limit():
    start = time.perf_counter()
    result = run_sandboxed("while True: pass", limits=LIMITS)
    assert result.returncode != 0 and not result.timed_out
    assert time.perf_counter() - start < LIMITS.wall_s


def test_sleeping_code_is_stopped_by_the_wall_clock():
    start = time.perf_counter()
    result = run_sandboxed("import time\ntime.sleep(60)", limits=LIMITS)
    assert result.timed_out and result.returncode is None
    assert time.perf_counter() - start < LIMITS.wall_s + 2


def test_a_memory_bomb_fails_inside_the_sandbox():
    result = run_sandboxed("x = bytearray(2 * 1024**3)\nprint('allocated')", limits=LIMITS)
    assert result.returncode != 0 and "MemoryError" in result.stderr and "allocated" not in result.stdout


def test_a_fork_bomb_stops_at_the_process_limit():
    code = (
        "import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n            time.sleep(3)\n"
        "            os._exit(0)\n        n += 1\nexcept OSError:\n    print('stopped after', n)"
    )
    result = run_sandboxed(code, limits=LIMITS)
    assert result.stdout.startswith("stopped after") and int(result.stdout.split()[-1]) < LIMITS.processes


def test_there_is_no_network():
    code = "import socket\ntry:\n    socket.create_connection(('127.0.0.1', 22), timeout=2)\n    print('connected')\nexcept OSError as e:\n    print('refused', e.errno)"
    result = run_sandboxed(code, limits=LIMITS)
    # ENETUNREACH (101), not a refused connection: the namespace has no interface up, not even loopback.
    assert result.stdout.strip() == "refused 101", result.stdout


def test_writes_outside_its_directory_change_nothing(tmp_path):
    targets = [ROOT / "SANDBOX_ESCAPE", Path.home() / "SANDBOX_ESCAPE", Path("/tmp/SANDBOX_ESCAPE"), Path("/etc/SANDBOX_ESCAPE")]
    code = "for path in %r:\n    try:\n        open(path, 'w').write('x')\n    except OSError as e:\n        print('refused', path)" % [str(t) for t in targets]
    run_sandboxed(code, limits=LIMITS)
    # /tmp inside the sandbox is a throw-away tmpfs: a write there may succeed but never lands here.
    assert not any(t.exists() for t in targets)


def test_output_is_bounded():
    result = run_sandboxed("print('x' * 10**7)", limits=LIMITS)
    assert len(result.stdout) <= LIMITS.output_bytes


def test_the_code_reward_runs_the_last_code_block():
    reward = CodeOutputMatch(limits=LIMITS)
    assert reward("Here:\n```python\nprint(sum(range(10)))\n```", "45") == 1.0
    assert reward("```python\nprint(44)\n```", "45") == 0.0
    assert reward("```python\nwhile True: pass\n```", "45") == 0.0
    assert not os.path.exists("/tmp/SANDBOX_ESCAPE")
