"""Mixed precision as the field does it: under Lightning's `precision: bf16-mixed` the weights and
the optimizer's state stay in their own dtype (float32 master weights for full fine-tuning, float32
adapters on a bf16 base for LoRA) while the matmuls run in bf16, the chunked output head included."""

import lightning as L
import pytest
import torch

from lit_posttrain.data.arithmetic import Arithmetic
from lit_posttrain.data.datamodule import TaskDataModule
from lit_posttrain.head import head_logp
from lit_posttrain.methods.grpo import GRPO
from lit_posttrain.methods.sft import SFT
from lit_posttrain.models import LoRA


def _odd_length(completion: str, answer: str) -> float:
    return float(len(completion) % 2)


def _fit(module, steps: int = 2) -> list[torch.dtype]:
    """Train `module` `steps` steps under bf16-mixed; the dtypes the policy's linear layers
    returned during training."""
    seen: list[torch.dtype] = []

    def record(layer, inputs, output):
        if torch.is_grad_enabled():
            seen.append(output.dtype)

    module.configure_model()
    hooks = [m.register_forward_hook(record) for m in module.policy.modules() if isinstance(m, torch.nn.Linear)]
    # The tiny random model never solves a sum: a reward that differs within a group gives GRPO a gradient.
    task = Arithmetic(max_operand=5, num_train=8, num_eval=2, verifier=_odd_length)
    data = TaskDataModule(task=task, batch_size=2)
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", precision="bf16-mixed", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    for hook in hooks:
        hook.remove()
    return seen


@pytest.mark.parametrize("method", [SFT, GRPO])
def test_full_fine_tuning_keeps_float32_weights_and_adam_state_and_computes_in_bf16(method):
    module = method(model="tiny-random-llama", dtype="float32", **({"group_size": 4} if method is GRPO else {}))
    module.configure_model()
    start = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    seen = _fit(module)
    assert seen and set(seen) == {torch.bfloat16}
    for name, p in module.policy.named_parameters():
        assert p.dtype == torch.float32, name
    state = module.trainer.optimizers[0].state
    assert state and all(s["exp_avg"].dtype == s["exp_avg_sq"].dtype == torch.float32 for s in state.values())
    assert any(not torch.equal(start[n], p) for n, p in module.policy.named_parameters())


def test_lora_adapters_stay_float32_on_a_bf16_base_and_compute_in_bf16():
    module = GRPO(model="tiny-random-llama", dtype="bfloat16", lora=LoRA(r=4), group_size=2)
    seen = _fit(module)
    assert seen and set(seen) == {torch.bfloat16}
    trainable = {n: p.dtype for n, p in module.policy.named_parameters() if p.requires_grad}
    frozen = {p.dtype for p in module.policy.parameters() if not p.requires_grad}
    assert trainable and set(trainable.values()) == {torch.float32} and frozen == {torch.bfloat16}


def test_the_chunked_head_runs_its_backward_under_the_forwards_autocast():
    """Under autocast the head's matmuls run in bf16, its result and gradients float32 and within
    bf16's precision of the float32 computation; the backward that makes the head again a chunk at
    a time (5 positions) agrees with the one-chunk path that keeps its forward's softmax."""
    from lit_posttrain import head as head_module

    torch.manual_seed(0)
    hidden_NH = torch.randn(12, 16, requires_grad=True)
    head = torch.nn.Linear(16, 40, bias=False)
    target_N = torch.randint(0, 40, (12,))
    grads = {}
    chunk_bytes = head_module.HEAD_CHUNK_BYTES
    try:
        for mixed, chunk in [(False, chunk_bytes), (True, chunk_bytes), (True, 4 * 40 * 5)]:
            head_module.HEAD_CHUNK_BYTES = chunk
            hidden_NH.grad, head.weight.grad = None, None
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
                logp_N = head_logp(hidden_NH, head, target_N)
            assert logp_N.dtype == torch.float32
            logp_N.sum().backward()
            grads[mixed, chunk] = (hidden_NH.grad.clone(), head.weight.grad.clone())
    finally:
        head_module.HEAD_CHUNK_BYTES = chunk_bytes
    exact, kept, remade = grads[False, chunk_bytes], grads[True, chunk_bytes], grads[True, 4 * 40 * 5]
    for e, k, r in zip(exact, kept, remade, strict=True):
        assert k.dtype == r.dtype == torch.float32 and not torch.equal(e, k)  # computed in bf16 ...
        torch.testing.assert_close(k, e, rtol=0.05, atol=0.02)  # ... to bf16's precision
    # The remade softmax is the kept one: the hidden states' gradient is the same to float32's
    # precision (made again in float32 it differed by 2e-4); the weight's adds bf16 products of
    # 5 positions at a time instead of 12.
    torch.testing.assert_close(remade[0], kept[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(remade[1], kept[1], rtol=0.02, atol=0.02)


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_and_the_cli_precision_follow_the_hardware(native, monkeypatch, tmp_path):
    """The default: where bf16 is native, `lit-posttrain fit` trains in bf16-mixed and `dtype: auto`
    keeps a fully fine-tuned policy's weights (and its reference's) in float32, the masters the
    optimizer steps, while a LoRA policy's frozen base and a teacher stay in bf16; elsewhere
    float32 and 32-true, as before."""
    from lit_posttrain import precision
    from lit_posttrain.cli import LitPostTrainCLI

    monkeypatch.setattr(precision, "native_bf16", lambda: native)
    monkeypatch.chdir(tmp_path)
    cli = LitPostTrainCLI(args=["--model", "lit_posttrain.methods.opd.OPD", "--model.model", "tiny-random-llama",
                                "--model.teacher", "tiny-random-llama", "--data.task", "lit_posttrain.data.arithmetic.Arithmetic"],
                          run=False)  # fmt: skip
    assert cli.trainer.precision == ("bf16-mixed" if native else "32-true")
    module = cli.model
    module.trainer = cli.trainer
    module.configure_model()
    storage = torch.bfloat16 if native else torch.float32
    assert {p.dtype for p in module.policy.parameters()} == {torch.float32}
    with module.reference() as reference:
        assert {p.dtype for p in reference.parameters()} == {torch.float32}
    assert {p.dtype for p in module.teacher.parameters()} == {storage}

    lora = GRPO(model="tiny-random-llama", lora=LoRA(r=4))
    lora.trainer = cli.trainer
    lora.configure_model()
    assert {p.dtype for p in lora.policy.parameters() if not p.requires_grad} == {storage}
    assert {p.dtype for p in lora.policy.parameters() if p.requires_grad} == {torch.float32}
