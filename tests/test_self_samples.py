"""benchmarks/self_samples.py, offline self-SFT's data: the starting model's samples that the
verifier accepts become the demonstrations, the held-out prompts stay the task's own."""

import json
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from self_samples import write_offline_task  # noqa: E402

from lit_posttrain.data.arithmetic import Arithmetic  # noqa: E402
from lit_posttrain.data.files import FileTask  # noqa: E402


class EveryOther:
    """Accepts every other sample it is shown, whatever it says: the kept share is known."""

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, completion: str, answer: str) -> float:
        self.seen += 1
        return float(self.seen % 2 == 0)


def test_kept_samples_become_demonstrations_and_the_held_out_prompts_are_the_tasks(tiny_model_dir, tmp_path):
    task = Arithmetic(max_operand=5, num_train=6, num_eval=4, verifier=EveryOther())
    path = write_offline_task(task, tiny_model_dir, torch.float32, tmp_path, n=2, max_new_tokens=3, seed=0)
    summary = json.loads((tmp_path / "samples.json").read_text())
    assert (summary["drawn"], summary["kept"]) == (12, 6)
    config = yaml.safe_load(path.read_text())["data"]["task"]["init_args"]
    offline = FileTask(config["train"], eval=config["eval"], name="arithmetic")
    train = offline.train_examples()
    assert len(train) == 6 and all(ex.demonstration is not None for ex in train)
    prompts = {json.dumps(ex.messages) for ex in task.train_examples()}
    assert all(json.dumps(ex.messages) in prompts for ex in train)  # each a training prompt of the task
    assert [(ex.messages, ex.answer) for ex in offline.eval_examples()] == [(ex.messages, ex.answer) for ex in task.eval_examples()]
