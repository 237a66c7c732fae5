"""Mixed precision with torch.amp: bf16 on CPU, fp16 with a GradScaler, float32 losses."""

import pytest
import torch

import textbrewer
from tests.conftest import make_batches, make_models, simple_adaptor, training_config


def float_models():
    return make_models(dtype=torch.float32)


def cpu_autocast_enabled():
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 takes no device argument (setup.py's floor is 2.3)
        return torch.is_autocast_cpu_enabled()


def test_bf16_training_on_cpu_reduces_the_loss(tmp_path):
    teacher, student = float_models()
    totals = []

    class Recorder(textbrewer.GeneralDistiller):
        def compute_loss(self, results_S, results_T):
            dtypes.add(results_S["logits"][0].dtype)
            total, parts = super().compute_loss(results_S, results_T)
            totals.append(float(total.detach()))
            return total, parts

    dtypes = set()
    config = textbrewer.DistillationConfig(
        kd_loss_type="kl",
        intermediate_matches=[
            {"layer_T": 3, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
        ],
    )
    distiller = Recorder(
        training_config(tmp_path, mixed_precision="bf16"),
        config,
        teacher,
        student,
        simple_adaptor,
        simple_adaptor,
    )
    distiller.train(torch.optim.Adam(student.parameters(), lr=0.02), None, make_batches(4), 15)
    assert dtypes == {torch.bfloat16}
    assert sum(totals[-4:]) < 0.5 * sum(totals[:4])


def test_losses_are_computed_in_float32_from_low_precision_logits(tmp_path):
    teacher, student = float_models()
    seen = []

    def loss(logits_S, logits_T, temperature):
        seen.append((logits_S.dtype, logits_T.dtype, cpu_autocast_enabled()))
        return textbrewer.losses.kd_ce_loss(logits_S, logits_T, temperature)

    textbrewer.KD_LOSS_MAP["spy"] = loss
    try:
        distiller = textbrewer.BasicDistiller(
            training_config(tmp_path, mixed_precision="bf16"),
            textbrewer.DistillationConfig(kd_loss_type="spy"),
            teacher,
            student,
            simple_adaptor,
            simple_adaptor,
        )
        distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), None, make_batches(1), 1)
    finally:
        del textbrewer.KD_LOSS_MAP["spy"]
    assert seen == [(torch.float32, torch.float32, False)]


def test_fp16_uses_a_grad_scaler_and_a_skipped_step_does_not_advance_the_scheduler(tmp_path):
    teacher, student = float_models()
    distiller = textbrewer.BasicDistiller(
        training_config(tmp_path, fp16=True, fp16_opt_level="O2"),
        textbrewer.DistillationConfig(),
        teacher,
        student,
        simple_adaptor,
        simple_adaptor,
    )
    assert distiller._engine.scaler.is_enabled()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    batches = make_batches(3)
    poisoned = {"done": False}

    def poison_once(batch):
        if not poisoned["done"]:
            poisoned["done"] = True
            student.head.weight.register_hook(lambda grad: grad * float("inf"))
        return batch

    before = {k: v.clone() for k, v in student.state_dict().items()}
    hooks = []
    original_register = student.head.weight.register_hook

    def register(hook):
        handle = original_register(hook)
        hooks.append(handle)
        return handle

    student.head.weight.register_hook = register

    def postprocess(batch):
        if not hooks:
            poison_once(batch)
        elif len(hooks) == 1 and poisoned["done"] and not poisoned.get("removed"):
            poisoned["removed"] = True
            hooks[0].remove()
        return batch

    distiller.train(optimizer, scheduler, batches, 1, batch_postprocessor=postprocess)
    # Step 1 was skipped (inf gradients): two real steps, so the LR halved twice, not three times.
    assert scheduler.last_epoch == 2
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)
    assert not torch.equal(before["head.weight"], student.state_dict()["head.weight"])


def test_fp16_opt_level_O0_means_full_precision(tmp_path):
    config = training_config(tmp_path, fp16=True, fp16_opt_level="O0")
    assert config.precision == "fp32"
