"""Wrong inputs of real jobs end in an error that names the argument, the value and the fix,
or in correct training where TextBrewer 0.2.x trained correctly."""

import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

import textbrewer
from tests.conftest import make_batches, make_models, simple_adaptor, training_config


def distiller_for(tmp_path, distill=None, adaptor_T=simple_adaptor, adaptor_S=simple_adaptor):
    teacher, student = make_models()
    distiller = textbrewer.BasicDistiller(
        training_config(tmp_path, ckpt_steps=2),
        distill or textbrewer.DistillationConfig(),
        teacher,
        student,
        adaptor_T,
        adaptor_S,
    )
    return distiller, teacher, student


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


def tensors():
    ids, masks, labels = zip(*make_batches(3))
    return torch.cat(ids), torch.cat(masks), torch.cat(labels)


# --------------------------------------------------------------------- data sources
def test_a_tensor_dataset_where_the_dataloader_goes(tmp_path):
    distiller, _, student = distiller_for(tmp_path)
    with pytest.raises(TypeError) as raised:
        distiller.train(sgd(student), None, TensorDataset(*tensors()), 1)
    assert "`dataloader` is a TensorDataset, which yields single examples" in str(raised.value)
    assert "wrap it: DataLoader(dataset, batch_size=..." in str(raised.value)


def test_a_dataset_of_examples_where_the_dataloader_goes(tmp_path):
    class Examples(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return torch.ones(6, dtype=torch.long), torch.ones(6, dtype=torch.long), index % 3

    distiller, _, student = distiller_for(tmp_path)
    with pytest.raises(TypeError, match=r"`dataloader` is a Examples \(a Dataset\), whose items"):
        distiller.train(sgd(student), Examples(), 1)  # 0.2.x order


def test_a_dataset_of_ready_batches_trains_as_in_0_2_x_with_a_warning(tmp_path, caplog):
    class Batches(Dataset):
        def __init__(self):
            self.batches = make_batches(2)

        def __len__(self):
            return len(self.batches)

        def __getitem__(self, index):
            return self.batches[index]

    distiller, _, student = distiller_for(tmp_path)
    with caplog.at_level(logging.WARNING, logger="textbrewer"):
        result = distiller.train(sgd(student), None, Batches(), 1)
    assert result.global_step == 2
    assert "each of its items is used as one batch" in caplog.text
    reference, _, student_ref = distiller_for(tmp_path / "list")
    reference.train(sgd(student_ref), None, make_batches(2), 1)
    for key, value in student_ref.state_dict().items():
        assert torch.equal(student.state_dict()[key], value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "`dataloader` is None: pass the DataLoader to train()"),
        (torch.zeros(4, 6), r"`dataloader` is a tensor of shape \(4, 6\), not a source of batches"),
        ({"input_ids": torch.zeros(4, 6)}, "iterating it gives its keys, not batches"),
        ("train.jsonl", "`dataloader`='train.jsonl' is a str, not a source of batches"),
    ],
)
def test_other_things_that_are_not_batches(tmp_path, data, message):
    distiller, _, student = distiller_for(tmp_path)
    with pytest.raises(TypeError, match=message):
        distiller.train(sgd(student), None, data, 1)


def test_a_dataloader_and_an_iterable_dataset_of_batches_are_accepted(tmp_path):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(make_batches(2))

    distiller, _, student = distiller_for(tmp_path)
    loader = DataLoader(TensorDataset(*tensors()), batch_size=4)
    assert distiller.train(sgd(student), None, loader, 1).global_step == 3
    assert distiller.train(sgd(student), None, Stream(), None, num_steps=2).global_step == 2


# --------------------------------------------------------------------- scheduler slot
def test_a_scheduler_class_in_the_scheduler_slot(tmp_path):
    distiller, _, student = distiller_for(tmp_path)
    with pytest.raises(TypeError) as raised:
        distiller.train(sgd(student), torch.optim.lr_scheduler.StepLR, make_batches(2), 1)
    message = str(raised.value)
    assert "`scheduler`=StepLR is a class, not an LR scheduler built over the optimizer" in message
    assert "scheduler_class=StepLR, scheduler_args={...}" in message
    assert "scheduler=StepLR(optimizer, ...)" in message


def test_a_scheduler_factory_function_in_the_scheduler_slot(tmp_path):
    def get_linear_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    distiller, _, student = distiller_for(tmp_path)
    with pytest.raises(TypeError, match="is a function.*scheduler_class=get_linear_schedule"):
        distiller.train(sgd(student), get_linear_schedule_with_warmup, make_batches(2), 1)


def test_scheduler_args_that_do_not_fit_the_class(tmp_path):
    distiller, _, student = distiller_for(tmp_path)
    with pytest.raises(TypeError) as raised:
        distiller.train(
            sgd(student),
            make_batches(2),
            1,
            scheduler_class=torch.optim.lr_scheduler.StepLR,
            scheduler_args={"num_warmup_steps": 10},
        )
    message = str(raised.value)
    assert "building the LR scheduler as StepLR(optimizer=optimizer, **scheduler_args)" in message
    assert "scheduler_args={'num_warmup_steps': 10}" in message


# --------------------------------------------------------------------- optimizer
def test_an_optimizer_over_the_teacher_trains_nothing_and_is_refused(tmp_path):
    distiller, teacher, student = distiller_for(tmp_path)
    with pytest.raises(ValueError, match="`optimizer`") as raised:
        distiller.train(sgd(teacher), None, make_batches(2), 1)
    assert "`optimizer` (SGD) holds the teacher's parameters" in str(raised.value)
    assert "build it over the student: SGD(model_S.parameters(), ...)" in str(raised.value)


def test_an_optimizer_over_a_copy_of_the_student_is_refused(tmp_path):
    distiller, _, student = distiller_for(tmp_path)
    copy = make_models()[1]
    with pytest.raises(ValueError, match="parameter values of another model"):
        distiller.train(sgd(copy), None, make_batches(2), 1)


def test_an_optimizer_over_part_of_the_student_trains_that_part(tmp_path):
    distiller, _, student = distiller_for(tmp_path)
    frozen = student.embed.weight.clone()
    head = student.head.weight.clone()
    distiller.train(torch.optim.SGD(student.head.parameters(), lr=0.1), None, make_batches(2), 1)
    assert torch.equal(student.embed.weight, frozen)
    assert not torch.equal(student.head.weight, head)


# --------------------------------------------------------------------- post-processor
def test_a_batch_postprocessor_returning_none(tmp_path):
    def forgets_return(batch):
        batch[0].clamp_(max=12)

    distiller, _, student = distiller_for(tmp_path)
    with pytest.raises(TypeError) as raised:
        distiller.train(sgd(student), None, make_batches(2), 1, batch_postprocessor=forgets_return)
    assert "`batch_postprocessor` returned None for a batch of type tuple" in str(raised.value)
    assert "`return batch`" in str(raised.value)


def test_multi_task_batch_postprocessors_returning_none_name_the_task(tmp_path):
    teacher, student = make_models()
    distiller = textbrewer.MultiTaskDistiller(
        training_config(tmp_path, ckpt_steps=1),
        textbrewer.DistillationConfig(),
        {"a": teacher},
        student,
        {"a": simple_adaptor},
        {"a": simple_adaptor},
    )
    with pytest.raises(TypeError, match=r"`batch_postprocessors\['a'\]` returned None"):
        distiller.train(
            sgd(student), None, {"a": make_batches(1)}, 1, batch_postprocessors={"a": print}
        )


# --------------------------------------------------------------------- calls into user code
def test_a_dict_batch_with_a_key_the_model_does_not_take(tmp_path):
    class DictModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = make_models()[1]

        def forward(self, input_ids, attention_mask, labels):
            return self.inner(input_ids, attention_mask, labels)

    def adaptor(batch, outputs):
        return simple_adaptor((batch["input_ids"], batch["attention_mask"]), outputs)

    teacher, student = DictModel(), DictModel()
    distiller = textbrewer.BasicDistiller(
        training_config(tmp_path), textbrewer.DistillationConfig(), teacher, student, adaptor,
        adaptor,
    )  # fmt: skip
    batches = [
        {"input_ids": i, "attention_mask": m, "labels": y, "idx": torch.arange(4)}
        for i, m, y in make_batches(2)
    ]
    with pytest.raises(TypeError) as raised:
        distiller.train(sgd(student), None, batches, 1)
    message = str(raised.value)
    assert "calling DictModel on the batch failed" in message
    assert "unexpected keyword argument 'idx'" in message
    assert "model(**batch, **args)" in message
    assert "this batch is a dict with keys ['input_ids', 'attention_mask', 'labels', 'idx']" in (
        message
    )


def test_a_misspelt_forward_argument_of_train(tmp_path):
    distiller, _, student = distiller_for(tmp_path)
    with pytest.raises(TypeError, match=r"`args` \(the extra keywords of train\(\)\) are \['outp"):
        distiller.train(sgd(student), None, make_batches(2), 1, output_hidden_state=True)
    with pytest.raises(TypeError, match="a flag only one model takes belongs in that model's"):
        distiller.train(sgd(student), None, make_batches(2), 1, output_hidden_state=True)


def test_an_adaptor_with_the_wrong_signature(tmp_path):
    distiller, _, student = distiller_for(tmp_path, adaptor_S=lambda outputs: {"logits": outputs})
    with pytest.raises(TypeError, match=r"adaptor_S is called as adaptor_S\(batch, model_outputs"):
        distiller.train(sgd(student), None, make_batches(2), 1)


def test_an_adaptor_that_fails_keeps_its_error_with_a_note(tmp_path):
    def attribute_adaptor(batch, outputs):
        return {"logits": outputs.logits}  # the model returns a tuple

    distiller, _, student = distiller_for(tmp_path, adaptor_S=attribute_adaptor)
    with pytest.raises(AttributeError) as raised:
        distiller.train(sgd(student), None, make_batches(2), 1)
    notes = getattr(raised.value, "__notes__", [])
    if hasattr(raised.value, "add_note"):
        assert notes == [
            "(raised in adaptor_S(batch, model_outputs); model_outputs is a tuple of 4 item(s), "
            "batch is a tuple of 3 item(s))"
        ]


def test_a_callback_with_the_wrong_signature(tmp_path):
    distiller, _, student = distiller_for(tmp_path)
    with pytest.raises(TypeError) as raised:
        distiller.train(sgd(student), None, make_batches(2), 1, callback=lambda step: None)
    assert "callback(model=..., step=...), by keyword" in str(raised.value)
    assert "def callback(model, step)" in str(raised.value)
    assert (tmp_path / "out" / "gs2.pkl").exists()  # written before the callback ran


def test_a_callback_that_raises_keeps_its_error_and_the_checkpoint(tmp_path):
    def evaluate(model, step):
        raise RuntimeError("evaluation data missing")

    distiller, _, student = distiller_for(tmp_path)
    with pytest.raises(RuntimeError, match="evaluation data missing") as raised:
        distiller.train(sgd(student), None, make_batches(2), 1, callback=evaluate)
    if hasattr(raised.value, "add_note"):
        assert "raised by the callback at optimizer step 2" in raised.value.__notes__[0]
    assert torch.load(tmp_path / "out" / "gs2.pkl").keys() == student.state_dict().keys()


# --------------------------------------------------------------------- adaptor results
def test_student_and_teacher_logits_of_different_batch_sizes(tmp_path):
    def first_row(batch, outputs):
        return {"logits": outputs[0][:1]}

    distiller, _, student = distiller_for(
        tmp_path, adaptor_T=lambda b, o: {"logits": o[0]}, adaptor_S=first_row
    )
    with pytest.raises(ValueError, match="logits") as raised:
        distiller.train(sgd(student), None, make_batches(2), 1)
    assert "logits[0]: adaptor_S returned shape (1, 3), adaptor_T (4, 3)" in str(raised.value)
    assert "batch sizes, lengths and numbers of classes must agree" in str(raised.value)


def test_student_and_teacher_logits_of_different_class_counts(tmp_path):
    distiller, _, student = distiller_for(
        tmp_path, adaptor_T=lambda b, o: {"logits": o[0][:, :2]}, adaptor_S=simple_adaptor
    )
    with pytest.raises(ValueError, match=r"adaptor_S returned shape \(4, 3\), adaptor_T \(4, 2\)"):
        distiller.train(sgd(student), None, make_batches(2), 1)


def test_hard_label_weight_without_losses_warns(tmp_path, caplog):
    distiller, _, student = distiller_for(
        tmp_path,
        textbrewer.DistillationConfig(hard_label_weight=0.5),
        adaptor_S=lambda b, o: {"logits": o[0]},
    )
    with caplog.at_level(logging.WARNING, logger="textbrewer"):
        distiller.train(sgd(student), None, make_batches(3), 1)
    warnings = [r for r in caplog.records if "hard_label_weight" in r.getMessage()]
    assert len(warnings) == 1
    assert "adaptor_S returns no 'losses'" in warnings[0].getMessage()


def test_an_adaptor_returning_none_for_a_list_key(tmp_path):
    distiller, _, student = distiller_for(tmp_path, adaptor_S=lambda b, o: {"logits": None})
    with pytest.raises(TypeError, match="adaptor_S: `logits` is None"):
        distiller.train(sgd(student), None, make_batches(2), 1)


# --------------------------------------------------------------------- more real-job mistakes
def test_a_scheduler_built_over_another_optimizer(tmp_path):
    distiller, _, student = distiller_for(tmp_path)
    other = sgd(student)
    scheduler = torch.optim.lr_scheduler.StepLR(other, 1)
    with pytest.raises(
        ValueError, match=r"`scheduler` \(StepLR\) was built over another optimizer"
    ):
        distiller.train(sgd(student), scheduler, make_batches(2), 1)


def test_a_frozen_student_with_nothing_else_to_train(tmp_path):
    distiller, _, student = distiller_for(tmp_path)
    for parameter in student.parameters():
        parameter.requires_grad_(False)
    with pytest.raises(ValueError, match=r"the student \(TinyEncoder\) has no parameter with"):
        distiller.train(sgd(student), None, make_batches(2), 1)


def test_the_student_as_its_own_teacher(tmp_path):
    _, student = make_models()
    distiller = textbrewer.BasicDistiller(
        training_config(tmp_path), textbrewer.DistillationConfig(), student, student,
        simple_adaptor, simple_adaptor,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"`model_S` is also a teacher.*copy.deepcopy\(teacher\)"):
        distiller.train(sgd(student), None, make_batches(2), 1)


def test_none_batches_from_the_data(tmp_path):
    distiller, _, student = distiller_for(tmp_path)
    with pytest.raises(TypeError, match="the micro-batch is None"):
        distiller.train(sgd(student), None, [None, None], 1)


def test_one_dimensional_logits_with_a_softmax_kd_loss(tmp_path):
    def first_logit(batch, outputs):
        return {"logits": outputs[0][:, 0]}

    distiller, _, student = distiller_for(tmp_path, adaptor_T=first_logit, adaptor_S=first_logit)
    with pytest.raises(ValueError, match=r"logits\[0\] has shape \(4,\).*kd_loss_type='mse'"):
        distiller.train(sgd(student), None, make_batches(2), 1)
    # The same single output regressed with 'mse' trains (0.2.x did too).
    distiller, _, student = distiller_for(
        tmp_path / "mse",
        textbrewer.DistillationConfig(kd_loss_type="mse"),
        adaptor_T=first_logit,
        adaptor_S=first_logit,
    )
    head = student.head.weight.clone()
    distiller.train(sgd(student), None, make_batches(2), 1)
    assert not torch.equal(head, student.head.weight)


def test_single_class_logits_warn_that_kd_teaches_nothing(tmp_path, caplog):
    def one_class(batch, outputs):
        return {"logits": outputs[0][:, :1], "losses": outputs[3]}

    distiller, _, student = distiller_for(tmp_path, adaptor_T=one_class, adaptor_S=one_class)
    with caplog.at_level(logging.WARNING, logger="textbrewer"):
        distiller.train(sgd(student), None, make_batches(2), 1)
    assert "its softmax is always 1, so the KD term is 0" in caplog.text


def test_a_built_scheduler_in_the_scheduler_class_slot(tmp_path):
    distiller, _, student = distiller_for(tmp_path)
    optimizer = sgd(student)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    with pytest.raises(TypeError, match=r"this is a built scheduler: pass it as scheduler=\.\.\."):
        distiller.train(optimizer, make_batches(2), 1, scheduler)  # 0.2.x order: scheduler_class


def test_a_projection_whose_dim_out_is_not_the_teachers_size(tmp_path):
    teacher, student = make_models(teacher_dim=8, student_dim=6)
    match = {"layer_T": 3, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
             "proj": ["linear", 6, 12]}  # fmt: skip
    distiller = textbrewer.GeneralDistiller(
        training_config(tmp_path),
        textbrewer.DistillationConfig(intermediate_matches=[match]),
        teacher,
        student,
        simple_adaptor,
        simple_adaptor,
    )
    distiller.projs.double()
    with pytest.raises(ValueError, match="dim_out") as raised:
        distiller.train(sgd(student), make_batches(2), 1, scheduler_class=None)
    message = str(raised.value)
    assert "proj ['linear', 6, 12] projects to dim_out=12" in message
    assert "the teacher's 'hidden' has size 8 (shape (4, 6, 8))" in message
    assert "set 'proj': ['linear', 6, 8]" in message


def test_multi_task_first_batch_checks_run_for_every_task(tmp_path):
    # Task 'b' cuts its student logits to the first row: only its own first batch can show it.
    def one_row_adaptor(batch, outputs):
        results = simple_adaptor(batch, outputs)
        return {**results, "logits": results["logits"][:1]}

    teacher_a, student = make_models()
    teacher_b, _ = make_models(seed=3)
    distiller = textbrewer.MultiTaskDistiller(
        training_config(tmp_path, ckpt_steps=4),
        textbrewer.DistillationConfig(),
        {"a": teacher_a, "b": teacher_b},
        student,
        {"a": simple_adaptor, "b": simple_adaptor},
        {"a": simple_adaptor, "b": one_row_adaptor},
    )
    np.random.seed(1)  # tasks are drawn from numpy's global generator: a then b, at the latest
    with pytest.raises(ValueError, match=r"logits\[0\]: adaptor_S returned shape \(1, "):
        distiller.train(
            sgd(student), None, {"a": make_batches(2), "b": make_batches(2)}, num_steps=8
        )
    assert distiller._first_batch_checked == {"adaptor_S['a']"}
