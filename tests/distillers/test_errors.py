"""Every wrong input a user can make gets a clear exception naming what is wrong."""

import logging

import pytest
import torch

import textbrewer
from tests.conftest import make_batches, make_models, simple_adaptor, training_config


def general(
    tmp_path,
    matches=None,
    adaptor_T=simple_adaptor,
    adaptor_S=simple_adaptor,
    teacher_dim=8,
    student_dim=8,
    **train,
):
    teacher, student = make_models(teacher_dim=teacher_dim, student_dim=student_dim)
    distiller = textbrewer.GeneralDistiller(
        training_config(tmp_path, **train),
        textbrewer.DistillationConfig(intermediate_matches=matches),
        teacher,
        student,
        adaptor_T,
        adaptor_S,
    )
    return distiller, torch.optim.SGD(student.parameters(), lr=0.1)


def test_step_mode_without_ckpt_steps(tmp_path):
    distiller, optimizer = general(tmp_path)
    with pytest.raises(ValueError, match=r"num_steps`=5 needs TrainingConfig\(ckpt_steps"):
        distiller.train(optimizer, None, make_batches(2), None, num_steps=5)


def test_neither_num_epochs_nor_num_steps(tmp_path):
    distiller, optimizer = general(tmp_path)
    with pytest.raises(ValueError, match="needs `num_epochs`.*or `num_steps`"):
        distiller.train(optimizer, None, make_batches(2), None)


def test_both_num_epochs_and_num_steps_trains_by_steps_with_a_warning(tmp_path, caplog):
    distiller, optimizer = general(tmp_path, ckpt_steps=3)
    with caplog.at_level(logging.WARNING, logger="textbrewer"):
        distiller.train(optimizer, None, make_batches(2), 4, num_steps=3)
    assert "num_epochs is ignored" in caplog.text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gs3.pkl"]


def test_adaptor_returning_a_non_dict(tmp_path):
    distiller, optimizer = general(tmp_path, adaptor_S=lambda batch, out: out[0])
    with pytest.raises(TypeError, match="adaptor_S must return a dict.*got Tensor"):
        distiller.train(optimizer, None, make_batches(1), 1)


def test_adaptor_unknown_key_is_ignored_with_one_warning(tmp_path, caplog):
    adaptor = lambda batch, out: {**simple_adaptor(batch, out), "logit": out[0]}  # noqa: E731
    distiller, optimizer = general(tmp_path, adaptor_S=adaptor)
    with caplog.at_level(logging.WARNING, logger="textbrewer"):
        distiller.train(optimizer, None, make_batches(3), 1)
    warnings = [r for r in caplog.records if "'logit'" in r.getMessage()]
    assert len(warnings) == 1
    assert "ignored" in warnings[0].getMessage()


def test_logits_lists_of_different_lengths(tmp_path):
    adaptor = lambda batch, out: {"logits": [out[0], out[0]]}  # noqa: E731
    distiller, optimizer = general(tmp_path, adaptor_T=adaptor)
    with pytest.raises(
        ValueError, match="adaptor_T returned 2 logits tensor.*adaptor_S returned 1"
    ):
        distiller.train(optimizer, None, make_batches(1), 1)


def test_match_layer_out_of_range_names_match_index_and_length(tmp_path):
    match = {"layer_T": 7, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
    distiller, optimizer = general(tmp_path, [match])
    with pytest.raises(
        IndexError,
        match=r"intermediate_matches\[0\]: layer_T=7 is out of range "
        r"of adaptor_T's 'hidden' list of length 4",
    ):
        distiller.train(optimizer, None, make_batches(1), 1)


def test_match_feature_missing_from_adaptor(tmp_path):
    match = {"layer_T": 0, "layer_S": 0, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
    adaptor = lambda batch, out: {"logits": out[0]}  # noqa: E731
    distiller, optimizer = general(tmp_path, [match], adaptor_S=adaptor)
    with pytest.raises(KeyError, match="needs adaptor_S to return 'hidden'"):
        distiller.train(optimizer, None, make_batches(1), 1)


def test_shape_mismatch_without_proj_names_both_shapes(tmp_path):
    match = {"layer_T": 1, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
    distiller, optimizer = general(tmp_path, [match], teacher_dim=8, student_dim=6)
    with pytest.raises(
        ValueError,
        match=r"student shape \(4, 6, 6\) != teacher shape \(4, 6, 8\)"
        r".*'proj': \['linear', 6, 8\]",
    ):
        distiller.train(optimizer, None, make_batches(1), 1)


def test_nst_accepts_different_hidden_sizes(tmp_path):
    match = {"layer_T": [0, 1], "layer_S": [0, 1], "feature": "hidden", "loss": "nst", "weight": 1}
    distiller, optimizer = general(tmp_path, [match], teacher_dim=8, student_dim=6)
    distiller.train(optimizer, None, make_batches(1), 1)


def test_epoch_mode_needs_a_dataloader_with_len(tmp_path):
    distiller, optimizer = general(tmp_path)
    with pytest.raises(TypeError, match="epoch mode needs a `dataloader` with __len__"):
        distiller.train(optimizer, None, iter(make_batches(2)), 1)


def test_fewer_batches_than_accumulation_steps(tmp_path):
    distiller, optimizer = general(tmp_path, gradient_accumulation_steps=4)
    with pytest.raises(ValueError, match="2 batches per epoch, fewer than"):
        distiller.train(optimizer, None, make_batches(2), 1)


def test_empty_source_in_step_mode(tmp_path):
    distiller, optimizer = general(tmp_path, ckpt_steps=1)
    with pytest.raises(ValueError, match="yielded no batch in a whole pass"):
        distiller.train(optimizer, None, iter([]), None, num_steps=2)


def test_multi_task_names_differ(tmp_path):
    teacher, student = make_models()
    with pytest.raises(KeyError, match=r"task names differ: `model_T` has \['a'\], `adaptor_S`"):
        textbrewer.MultiTaskDistiller(
            training_config(tmp_path, ckpt_steps=1),
            textbrewer.DistillationConfig(),
            {"a": teacher},
            student,
            {"a": simple_adaptor},
            {"b": simple_adaptor},
        )
    distiller = textbrewer.MultiTaskDistiller(
        training_config(tmp_path, ckpt_steps=1),
        textbrewer.DistillationConfig(),
        {"a": teacher},
        student,
        {"a": simple_adaptor},
        {"a": simple_adaptor},
    )
    with pytest.raises(KeyError, match="`dataloaders` has \\['b'\\]"):
        distiller.train(
            torch.optim.SGD(student.parameters(), lr=0.1), None, {"b": make_batches(1)}, 1
        )


def test_prebuilt_scheduler_with_projections_says_to_use_scheduler_class(tmp_path):
    match = {
        "layer_T": 1,
        "layer_S": 1,
        "feature": "hidden",
        "loss": "hidden_mse",
        "weight": 1,
        "proj": ["linear", 6, 8],
    }
    distiller, optimizer = general(tmp_path, [match], teacher_dim=8, student_dim=6)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    with pytest.raises(ValueError, match="pass `scheduler_class`"):
        distiller.train(optimizer, scheduler, make_batches(1), 1)
    assert len(optimizer.param_groups) == 1


def test_missing_cuda_is_an_error_not_a_fallback(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    teacher, student = make_models()
    with pytest.raises(RuntimeError, match="device`='cuda' asks for CUDA"):
        textbrewer.BasicDistiller(
            textbrewer.TrainingConfig(output_dir=str(tmp_path)),
            textbrewer.DistillationConfig(),
            teacher,
            student,
            simple_adaptor,
            simple_adaptor,
        )


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        (("not an optimizer", None, [], 1), TypeError, "`optimizer`='not an optimizer'"),
        ((None, [], 0), ValueError, "`num_epochs`=0 must be > 0"),
        ((None, [], -1.5), ValueError, "`num_epochs`=-1.5 must be > 0"),
        ((None, [], "2"), TypeError, "`num_epochs`='2' must be a number"),
        ((None, [], 1, None, "cb"), TypeError, "`callback`='cb' must be callable"),
        ((None, [], 1, None, None, None, None), TypeError, "at most 7 positional"),
    ],
)
def test_bad_train_arguments(tmp_path, arguments, error, message):
    distiller, optimizer = general(tmp_path)
    call = arguments if isinstance(arguments[0], str) else (optimizer, *arguments)
    with pytest.raises(error, match=message):
        distiller.train(*call)


def test_constructor_type_errors(tmp_path):
    teacher, student = make_models()
    config = training_config(tmp_path)
    with pytest.raises(TypeError, match="`model_S` must be a torch.nn.Module"):
        textbrewer.BasicDistiller(
            config, textbrewer.DistillationConfig(), teacher, "x", simple_adaptor, simple_adaptor
        )
    with pytest.raises(TypeError, match="`adaptor_T` must be callable"):
        textbrewer.BasicDistiller(
            config, textbrewer.DistillationConfig(), teacher, student, None, simple_adaptor
        )
    with pytest.raises(TypeError, match="`train_config` must be a TrainingConfig"):
        textbrewer.BasicDistiller(
            {}, textbrewer.DistillationConfig(), teacher, student, simple_adaptor, simple_adaptor
        )


def test_probability_shift_without_labels(tmp_path):
    teacher, student = make_models()
    adaptor = lambda batch, out: {"logits": out[0]}  # noqa: E731
    distiller = textbrewer.BasicDistiller(
        training_config(tmp_path),
        textbrewer.DistillationConfig(probability_shift=True),
        teacher,
        student,
        adaptor,
        adaptor,
    )
    with pytest.raises(ValueError, match="adaptor_S must return 'labels'"):
        distiller.train(torch.optim.SGD(student.parameters(), lr=0.1), None, make_batches(1), 1)


def test_non_callable_batch_postprocessor_in_step_mode(tmp_path):
    distiller, optimizer = general(tmp_path, ckpt_steps=1)
    with pytest.raises(TypeError, match="`batch_postprocessor`=3 must be callable"):
        distiller.train(optimizer, None, make_batches(1), None, num_steps=1, batch_postprocessor=3)
