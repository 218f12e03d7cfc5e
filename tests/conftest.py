import pytest

from lit_posttrain.models import resolve_model_source


@pytest.fixture(scope="session")
def tiny_model_dir() -> str:
    """A tiny random Llama with a character-level tokenizer (built once, cached)."""
    return resolve_model_source("tiny-random-llama")
