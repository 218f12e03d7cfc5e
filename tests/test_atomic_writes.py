"""A kill inside any write the library makes leaves the previous good copy (or the new one) whole
under the final name: the exported model folder and the probes' JSON files here; checkpoints in
tests/test_resume.py (one file) and tests/test_distributed.py (FSDP2's folders)."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lit_posttrain import atomic
from lit_posttrain.atomic import recover_folder, replace_folder, write_json_atomically
from lit_posttrain.export import save_hf_folder
from lit_posttrain.models import load_model, load_tokenizer, resolve_model_source


def _folder(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "file").write_text(text)
    return path


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2_exchange", "two_renames"])
def test_replace_folder_swaps_in_the_new_copy_and_removes_the_old(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    folder = _folder(tmp_path / "out", "old")
    replace_folder(_folder(tmp_path / "new", "new"), folder)
    assert (folder / "file").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    replace_folder(_folder(tmp_path / "first", "first"), tmp_path / "absent")  # nothing there before
    assert (tmp_path / "absent" / "file").read_text() == "first"


def test_recover_folder_puts_back_the_old_copy_after_a_kill_between_the_two_renames(tmp_path):
    _folder(tmp_path / "out.old", "old")  # renamed aside; the new copy never arrived
    recover_folder(tmp_path / "out")
    assert (tmp_path / "out" / "file").read_text() == "old" and not (tmp_path / "out.old").exists()
    recover_folder(tmp_path / "out")  # nothing to do when the folder is there
    assert (tmp_path / "out" / "file").read_text() == "old"


# Exports `src` (weights shifted by 1, so that the new export differs from the old) to `folder` and
# SIGKILLs itself at `point` inside the write.
KILL_INSIDE_EXPORT = """
import os, signal, sys
from pathlib import Path
import torch
from lit_posttrain import atomic
from lit_posttrain.export import save_hf_folder
from lit_posttrain.models import load_model, load_tokenizer

src, folder, point = sys.argv[1:]
model, tokenizer = load_model(src, torch.float32), load_tokenizer(src)
with torch.no_grad():
    for p in model.parameters():
        p.add_(1.0)

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if point == "writing":  # the new model's files written, the tokenizer's not
    tokenizer.save_pretrained = die
elif point == "before_swap":
    atomic._exchange = die
elif point == "after_swap":  # swapped, the old copy not yet removed
    exchange = atomic._exchange
    atomic._exchange = lambda a, b: exchange(a, b) and die()
elif point == "between_renames":  # no atomic exchange: the old copy moved aside, the new not yet in
    atomic._exchange = lambda a, b: False
    rename, calls = Path.rename, []
    def rename_then_die(self, target):
        calls.append(target)
        if len(calls) == 2:
            die()
        return rename(self, target)
    Path.rename = rename_then_die
save_hf_folder(model, tokenizer, folder)
"""


@pytest.mark.parametrize(
    ("point", "expected"),
    [("writing", "old"), ("before_swap", "old"), ("after_swap", "new"), ("between_renames", "old")],
)
def test_a_kill_inside_the_export_leaves_a_whole_model(tmp_path, point, expected):
    src = resolve_model_source("tiny-random-llama")
    old = load_model(src, torch.float32)
    folder = tmp_path / "hf_model"
    save_hf_folder(old, load_tokenizer(src), folder)
    killed = subprocess.run([sys.executable, "-c", KILL_INSIDE_EXPORT, src, str(folder), point], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    recover_folder(folder)  # what the next export does first (only the two-rename case needs it)
    weights = load_file(folder / "model.safetensors")
    shift = 0.0 if expected == "old" else 1.0
    for name, p in old.state_dict().items():
        if name in weights:  # tied weights are saved once
            assert torch.equal(weights[name], p + shift), (point, name)
    assert load_tokenizer(str(folder)) is not None and load_model(str(folder), torch.float32) is not None
    # The next export goes through and leaves nothing beside the folder.
    save_hf_folder(old, load_tokenizer(src), folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf_model"]


KILL_INSIDE_JSON = """
import os, signal, sys
from pathlib import Path
from lit_posttrain.atomic import write_json_atomically

os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # the new file written, not yet renamed
write_json_atomically(Path(sys.argv[1]), {"history": ["new"]})
"""


def test_a_kill_inside_a_json_write_leaves_the_previous_file(tmp_path):
    path = tmp_path / "probes.json"
    write_json_atomically(path, {"history": ["old"]})
    killed = subprocess.run([sys.executable, "-c", KILL_INSIDE_JSON, str(path)], capture_output=True, text=True, timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert json.loads(path.read_text()) == {"history": ["old"]}
