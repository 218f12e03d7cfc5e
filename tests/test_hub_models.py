"""A hub id as the model source, served from the hub cache as a local folder (no network here: the
cache is written by the test and the hub client set offline), with `revision` pinning a commit and
`attn_implementation` choosing transformers' attention kernel."""

import shutil

import pytest
import torch

from lit_posttrain.methods.base import PostTrainingModule
from lit_posttrain.models import ModelSourceError, resolve_model_source
from lit_posttrain.rollout import vllm_checks

MAIN, V1 = "a" * 40, "b" * 40  # the commits the branch `main` and the tag `v1` point at


@pytest.fixture
def hub(tmp_path, monkeypatch, tiny_model_dir):
    """A hub cache holding `lit/tiny` at two commits, seeds 0 (main) and 1 (v1), offline."""
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--lit--tiny"
    for ref, commit, source in (("main", MAIN, tiny_model_dir), ("v1", V1, resolve_model_source("tiny-random-llama:1"))):
        shutil.copytree(source, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return repo


def test_a_hub_id_is_its_snapshot_folder_at_the_revision(hub):
    assert resolve_model_source("lit/tiny") == str(hub / "snapshots" / MAIN)
    assert resolve_model_source("lit/tiny", revision="v1") == str(hub / "snapshots" / V1)
    module = PostTrainingModule(model="lit/tiny", revision="v1", dtype="float32")
    module.configure_model()
    pinned = PostTrainingModule(model="tiny-random-llama:1", dtype="float32")
    pinned.configure_model()
    assert all(torch.equal(a, b) for a, b in zip(module.policy.state_dict().values(), pinned.policy.state_dict().values(), strict=True))
    # VLLMEngine starts vLLM on the policy's folder: a hub id's is its snapshot.
    assert vllm_checks.model_folder(module.policy) == str(hub / "snapshots" / V1)


def test_a_missing_hub_model_or_a_misplaced_revision_is_refused(hub, tiny_model_dir):
    with pytest.raises(ModelSourceError, match="hub model 'lit/absent': not in the local hub cache and could not be downloaded"):
        resolve_model_source("lit/absent")
    with pytest.raises(ModelSourceError, match="'lit/tiny@v9'"):
        resolve_model_source("lit/tiny", revision="v9")
    with pytest.raises(ModelSourceError, match="revision 'v1' is for hub ids"):
        resolve_model_source(tiny_model_dir, revision="v1")


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_attn_implementation_reaches_the_policy_and_the_reference(kernel):
    module = PostTrainingModule(model="tiny-random-llama", dtype="float32", attn_implementation=kernel)
    module.configure_model()
    assert module.policy.config._attn_implementation == kernel
    with module.reference() as reference:
        assert reference.config._attn_implementation == kernel
