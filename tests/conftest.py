import os

# Two test workers share this project's two cores (pyproject's addopts): one thread each, and one
# for the processes they start, as the multi-process tests already run. Two threads per worker
# would put four busy threads on two cores, each waiting on the others at every parallel region.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from lit_posttrain.models import resolve_model_source  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir() -> str:
    """A tiny random Llama with a character-level tokenizer (built once, cached)."""
    return resolve_model_source("tiny-random-llama")


# The slowest files first (measured: each takes 2-4 minutes of a worker): the two workers take whole
# files in collection order (`--dist loadfile`), and a slow file left to the end runs alone on one
# worker while the other idles. test_engine.py just before test_vllm_engine.py: the engine one
# leaves started is the next one's when they share a worker.
SLOW_FILES_FIRST = [
    "test_resume.py", "test_vllm_server.py", "test_distributed.py", "test_vllm_distributed.py", "test_engine.py",
    "test_vllm_engine.py", "test_compare_benchmark.py", "test_forgetting_benchmark.py", "test_gpu_check.py",
]  # fmt: skip


def pytest_collection_modifyitems(items) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept
