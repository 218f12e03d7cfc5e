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
