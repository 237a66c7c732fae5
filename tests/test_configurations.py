"""TrainingConfig and DistillationConfig: fields, defaults, round trips and validation messages."""

import copy
import dataclasses
import inspect
import json
import os
import pathlib
import re

import pytest
import torch

from tests.conftest import make_batches, make_models, simple_adaptor
from textbrewer import (
    BasicDistiller,
    DistillationConfig,
    GeneralDistiller,
    TrainingConfig,
    presets,
)
from textbrewer.matches import IntermediateMatch
from textbrewer.training.engine import resolve_device

# SPEC §2 signatures, in signature order, then the §10 fields the class documents.
TRAINING_DEFAULTS = [
    ("gradient_accumulation_steps", 1),
    ("ckpt_frequency", 1),
    ("ckpt_epoch_frequency", 1),
    ("ckpt_steps", None),
    ("log_dir", None),
    ("output_dir", "./saved_models"),
    ("device", "cuda"),
    ("fp16", False),
    ("fp16_opt_level", "O1"),
    ("data_parallel", False),
    ("local_rank", -1),
]
TRAINING_EXTRA_DEFAULTS = [
    ("mixed_precision", None),
    ("save_training_state", False),
    ("log_every_n_steps", 50),
    ("progress_bar", True),
    ("eval_steps", None),
    ("save_total_limit", None),
    ("metric_for_best_model", None),
    ("greater_is_better", None),
    ("early_stopping_patience", None),
    ("early_stopping_threshold", 0.0),
    ("log_train_scalars", None),
    ("torch_compile", False),
]
DISTILLATION_DEFAULTS = [
    ("temperature", 4),
    ("temperature_scheduler", "none"),
    ("hard_label_weight", 0),
    ("hard_label_weight_scheduler", "none"),
    ("kd_loss_type", "ce"),
    ("kd_loss_weight", 1),
    ("kd_loss_weight_scheduler", "none"),
    ("probability_shift", False),
    ("intermediate_matches", None),
    ("is_caching_logits", False),
    ("kd_loss_t2_scaling", False),  # beyond 0.2.x, opt-in
]

SINGLE_LAYER_LOSSES = [
    "attention_mse_sum",
    "attention_mse",
    "attention_ce_mean",
    "attention_ce",
    "hidden_mse",
    "cos",
    "pkd",
]
TWO_LAYER_LOSSES = ["fsp", "nst", "gram", "mmd"]


def match(**overrides):
    """A valid single-layer match dict, with `overrides` applied."""
    entry = {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
    entry.update(overrides)
    return entry


def training(tmp_path, **overrides):
    settings = {"device": "cpu", "output_dir": str(tmp_path / "out")}
    settings.update(overrides)
    return TrainingConfig(**settings)


@pytest.fixture
def registered():
    """Registers a match loss, a weight scheduler and a temperature scheduler, then removes them."""

    def l1_loss(feature_S, feature_T, mask=None):
        return (feature_S - feature_T).abs().mean()

    def halfway(progress):
        return min(1.0, 2 * progress)

    def fixed_temperature(logits_S, logits_T, base_temperature):
        return base_temperature

    additions = [
        (presets.MATCH_LOSS_MAP, "test_l1", l1_loss),
        (presets.WEIGHT_SCHEDULER, "test_halfway", halfway),
        (presets.TEMPERATURE_SCHEDULER, "test_fixed", fixed_temperature),
    ]
    for registry, name, function in additions:
        registry[name] = function
    try:
        yield
    finally:
        for registry, name, _ in additions:
            registry.pop(name, None)


# ---------------------------------------------------------------- fields, defaults and printing


def test_training_config_signature_lists_the_spec_fields_then_the_extra_fields_with_defaults():
    parameters = inspect.signature(TrainingConfig).parameters
    expected = TRAINING_DEFAULTS + TRAINING_EXTRA_DEFAULTS
    assert [(name, p.default) for name, p in parameters.items()] == expected
    assert [field.name for field in dataclasses.fields(TrainingConfig)] == [n for n, _ in expected]


def test_distillation_config_signature_lists_the_spec_fields_with_their_defaults():
    parameters = inspect.signature(DistillationConfig).parameters
    assert [(name, p.default) for name, p in parameters.items()] == DISTILLATION_DEFAULTS


def test_training_config_built_with_only_an_output_dir_holds_every_default(tmp_path):
    config = TrainingConfig(output_dir=str(tmp_path / "out"))
    for name, default in TRAINING_DEFAULTS + TRAINING_EXTRA_DEFAULTS:
        if name != "output_dir":
            assert getattr(config, name) == default, name
    assert config.device == "cuda"  # the documented default is accepted without CUDA present


def test_distillation_config_built_without_arguments_holds_every_default():
    config = DistillationConfig()
    for name, default in DISTILLATION_DEFAULTS:
        assert getattr(config, name) == default, name


def test_training_config_keeps_every_value_it_is_given(tmp_path):
    values = {
        "gradient_accumulation_steps": 3,
        "ckpt_frequency": 2,
        "ckpt_epoch_frequency": 4,
        "ckpt_steps": 7,
        "log_dir": str(tmp_path / "logs"),
        "output_dir": str(tmp_path / "out"),
        "device": "cpu",
        "fp16": True,
        "fp16_opt_level": "O2",
        "data_parallel": True,
        "local_rank": 0,
        "mixed_precision": "fp16",
        "save_training_state": True,
        "log_every_n_steps": 5,
        "progress_bar": False,
    }
    config = TrainingConfig(**values)
    assert {name: getattr(config, name) for name in values} == values


def test_str_of_a_training_config_is_one_name_colon_value_line_per_field_in_order(tmp_path):
    out = str(tmp_path / "out")
    config = TrainingConfig(output_dir=out, device="cpu", ckpt_steps=10)
    assert str(config).splitlines() == [
        "gradient_accumulation_steps : 1",
        "ckpt_frequency : 1",
        "ckpt_epoch_frequency : 1",
        "ckpt_steps : 10",
        "log_dir : None",
        f"output_dir : {out}",
        "device : cpu",
        "fp16 : False",
        "fp16_opt_level : O1",
        "data_parallel : False",
        "local_rank : -1",
        "mixed_precision : None",
        "save_training_state : False",
        "log_every_n_steps : 50",
        "progress_bar : True",
        "eval_steps : None",
        "save_total_limit : None",
        "metric_for_best_model : None",
        "greater_is_better : None",
        "early_stopping_patience : None",
        "early_stopping_threshold : 0.0",
        "log_train_scalars : None",
        "torch_compile : False",
    ]


def test_str_of_a_distillation_config_is_one_name_colon_value_line_per_field_in_order():
    config = DistillationConfig(temperature=8, kd_loss_type="mse", temperature_scheduler="constant")
    assert str(config).splitlines() == [
        "temperature : 8",
        "temperature_scheduler : constant",
        "hard_label_weight : 0",
        "hard_label_weight_scheduler : none",
        "kd_loss_type : mse",
        "kd_loss_weight : 1",
        "kd_loss_weight_scheduler : none",
        "probability_shift : False",
        "intermediate_matches : None",
        "is_caching_logits : False",
        "kd_loss_t2_scaling : False",
    ]


def test_repr_of_a_config_names_the_class_and_its_values(tmp_path):
    text = repr(DistillationConfig(temperature=8))
    assert text.startswith("DistillationConfig(")
    assert "temperature=8" in text
    assert "device='cpu'" in repr(training(tmp_path))


# ---------------------------------------------------------------- matches


def test_a_three_element_proj_is_stored_with_an_empty_options_dict():
    config = DistillationConfig(intermediate_matches=[match(proj=["linear", 384, 768])])
    assert config.intermediate_matches[0].proj == ["linear", 384, 768, {}]
    assert config.to_dict()["intermediate_matches"][0]["proj"] == ["linear", 384, 768, {}]


def test_a_four_element_proj_keeps_its_optimizer_options():
    config = DistillationConfig(
        intermediate_matches=[match(proj=["tanh", 4, 8, {"lr": 1e-3, "weight_decay": 0.0}])]
    )
    assert config.intermediate_matches[0].proj == ["tanh", 4, 8, {"lr": 1e-3, "weight_decay": 0.0}]


def test_matches_are_objects_with_the_six_documented_attributes():
    config = DistillationConfig(
        intermediate_matches=[
            match(layer_T=4, layer_S=1, weight=0.5, proj=["relu", 3, 5]),
            {"layer_T": [0, 2], "layer_S": [0, 1], "feature": "hidden", "loss": "nst", "weight": 2},
            match(feature="attention", loss="attention_ce", layer_T=3, layer_S=0),
        ]
    )
    first, second, third = config.intermediate_matches
    assert isinstance(first, IntermediateMatch)
    assert (first.layer_T, first.layer_S, first.feature, first.loss, first.weight, first.proj) == (
        4,
        1,
        "hidden",
        "hidden_mse",
        0.5,
        ["relu", 3, 5, {}],
    )
    assert (second.layer_T, second.layer_S, second.loss, second.weight, second.proj) == (
        [0, 2],
        [0, 1],
        "nst",
        2,
        None,
    )
    assert (third.feature, third.loss, third.layer_T, third.layer_S) == (
        "attention",
        "attention_ce",
        3,
        0,
    )


def test_two_layer_indices_given_as_tuples_are_stored_as_lists():
    config = DistillationConfig(
        intermediate_matches=[match(layer_T=(1, 3), layer_S=(0, 1), loss="fsp")]
    )
    assert config.intermediate_matches[0].layer_T == [1, 3]
    assert config.intermediate_matches[0].layer_S == [0, 1]


def test_to_dict_gives_back_plain_dicts_for_matches_and_is_json_serialisable():
    config = DistillationConfig(intermediate_matches=[match(proj=["linear", 2, 3])])
    plain = config.to_dict()
    assert plain["intermediate_matches"] == [
        {
            "layer_T": 2,
            "layer_S": 1,
            "feature": "hidden",
            "loss": "hidden_mse",
            "weight": 1,
            "proj": ["linear", 2, 3, {}],
        }
    ]
    assert type(plain["intermediate_matches"][0]) is dict
    assert json.loads(json.dumps(plain)) == plain


# ---------------------------------------------------------------- round trips

DISTILLATION_CASES = {
    "defaults": {},
    "everything_set": {
        "temperature": 2.5,
        "temperature_scheduler": "constant",
        "hard_label_weight": 0.3,
        "hard_label_weight_scheduler": "linear_growth",
        "kd_loss_type": "mse",
        "kd_loss_weight": 0.7,
        "kd_loss_weight_scheduler": "linear_decay",
        "probability_shift": True,
        "is_caching_logits": True,
    },
    "matches_with_3_and_4_element_proj_and_two_layers": {
        "intermediate_matches": [
            match(proj=["linear", 4, 8]),
            match(layer_T=0, layer_S=0, proj=["relu", 4, 8, {"lr": 0.001}]),
            match(layer_T=[0, 1], layer_S=[0, 1], loss="fsp", weight=0.25),
            match(layer_T=[1, 2], layer_S=[0, 1], loss="mmd", feature="attention"),
            match(feature="attention", loss="attention_mse_sum", weight=3),
        ]
    },
    "flsw_scheduler_list": {"temperature_scheduler": ["flsw", 1.0, 2.0]},
    "cwsm_scheduler_list": {"temperature_scheduler": ["cwsm", 0.5]},
    "flsw_scheduler_with_kwargs": {"temperature_scheduler": ["flsw", {"beta": 1, "gamma": 2}]},
}


@pytest.mark.parametrize("kwargs", DISTILLATION_CASES.values(), ids=DISTILLATION_CASES.keys())
def test_distillation_config_round_trips_through_to_dict(kwargs):
    config = DistillationConfig(**copy.deepcopy(kwargs))
    again = DistillationConfig.from_dict(config.to_dict())
    assert again == config
    assert again.to_dict() == config.to_dict()


@pytest.mark.parametrize("kwargs", DISTILLATION_CASES.values(), ids=DISTILLATION_CASES.keys())
def test_distillation_config_round_trips_through_a_json_file(kwargs, tmp_path):
    config = DistillationConfig(**copy.deepcopy(kwargs))
    path = tmp_path / "distill.json"
    config.to_json_file(path)
    assert json.loads(path.read_text(encoding="utf-8")) == config.to_dict()
    assert DistillationConfig.from_json_file(path) == config
    assert DistillationConfig.from_json_file(str(path)) == config


def test_from_dict_is_the_same_as_calling_the_class_with_the_keys():
    settings = {"temperature": 3, "kd_loss_type": "mse", "intermediate_matches": [match()]}
    assert DistillationConfig.from_dict(copy.deepcopy(settings)) == DistillationConfig(**settings)


def test_from_json_file_reads_a_hand_written_0_2_style_file(tmp_path):
    path = tmp_path / "distill.json"
    path.write_text(
        '{"temperature": 8, "hard_label_weight": 0, "kd_loss_type": "ce",'
        ' "intermediate_matches": [{"layer_T": 0, "layer_S": 0, "feature": "hidden",'
        ' "loss": "hidden_mse", "weight": 1, "proj": ["linear", 312, 768]}]}',
        encoding="utf-8",
    )
    config = DistillationConfig.from_json_file(path)
    assert config.temperature == 8
    assert config.intermediate_matches[0].proj == ["linear", 312, 768, {}]


def test_training_config_round_trips_through_to_dict_and_a_json_file(tmp_path):
    config = training(
        tmp_path,
        gradient_accumulation_steps=2,
        ckpt_frequency=3,
        ckpt_steps=100,
        log_dir=str(tmp_path / "logs"),
        mixed_precision="bf16",
        save_training_state=True,
    )
    assert TrainingConfig.from_dict(config.to_dict()) == config
    path = tmp_path / "train.json"
    config.to_json_file(path)
    assert json.loads(path.read_text(encoding="utf-8")) == config.to_dict()
    assert TrainingConfig.from_json_file(path) == config


def test_to_dict_of_a_training_config_turns_devices_and_paths_into_strings(tmp_path):
    config = TrainingConfig(device=torch.device("cpu"), output_dir=tmp_path / "out")
    plain = config.to_dict()
    assert plain["device"] == "cpu"
    assert plain["output_dir"] == str(tmp_path / "out")
    assert json.loads(json.dumps(plain)) == plain


@pytest.mark.parametrize(
    "overrides",
    [
        lambda tmp_path: {"device": torch.device("cpu")},
        lambda tmp_path: {"output_dir": pathlib.Path(tmp_path / "out")},
    ],
    ids=["torch_device", "pathlib_output_dir"],
)
def test_training_config_with_a_torch_device_or_path_round_trips_to_an_equal_config(
    overrides, tmp_path
):
    config = training(tmp_path, **overrides(tmp_path))
    assert TrainingConfig.from_dict(config.to_dict()) == config


# ---------------------------------------------------------------- output_dir and device


def test_output_dir_is_created_with_its_parents_at_construction(tmp_path):
    target = tmp_path / "a" / "b" / "c"
    TrainingConfig(device="cpu", output_dir=str(target))
    assert target.is_dir()


def test_an_existing_output_dir_and_its_files_are_left_alone(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "gs5.pkl").write_bytes(b"keep")
    TrainingConfig(device="cpu", output_dir=str(target))
    assert (target / "gs5.pkl").read_bytes() == b"keep"


def test_a_process_with_local_rank_above_zero_does_not_create_output_dir(tmp_path):
    TrainingConfig(device="cpu", output_dir=str(tmp_path / "rank1"), local_rank=1)
    assert not (tmp_path / "rank1").exists()


def test_output_dir_may_be_a_pathlib_path(tmp_path):
    TrainingConfig(device="cpu", output_dir=tmp_path / "as_path" / "deep")
    assert (tmp_path / "as_path" / "deep").is_dir()


@pytest.mark.parametrize(
    "device", [torch.device("cpu"), torch.device("cuda", 1), "cpu", "cuda:0", "cuda"]
)
def test_device_accepts_strings_and_torch_devices(device, tmp_path):
    config = training(tmp_path, device=device)
    assert config.device == str(device)
    assert torch.device(config.device) == torch.device(device)


def test_device_auto_is_accepted_and_round_trips_as_auto(tmp_path):
    config = training(tmp_path, device="auto")
    assert config.device == "auto"
    assert config.to_dict()["device"] == "auto"
    assert TrainingConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("cuda_available", "local_rank", "expected"),
    [(False, -1, "cpu"), (True, -1, "cuda"), (True, 1, "cuda:1"), (False, 1, "cpu")],
)
def test_device_auto_resolves_to_cuda_only_when_available(
    cuda_available, local_rank, expected, tmp_path, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
    config = training(tmp_path, device="auto", local_rank=local_rank)
    assert resolve_device(config) == torch.device(expected)


def test_a_distiller_with_device_auto_trains_on_the_resolved_device(tmp_path):
    teacher, student = make_models()
    config = training(tmp_path, device="auto", progress_bar=False)
    distiller = BasicDistiller(
        config, DistillationConfig(), teacher, student, simple_adaptor, simple_adaptor
    )
    before = [p.detach().clone() for p in student.parameters()]
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    distiller.train(optimizer, None, make_batches(2), num_epochs=1)
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert {p.device.type for p in student.parameters()} == {expected.type}
    assert not all(torch.equal(a, b.cpu()) for a, b in zip(before, student.parameters()))
    assert sorted(os.listdir(tmp_path / "out")) == ["gs2.pkl"]


# ---------------------------------------------------------------- precision


@pytest.mark.parametrize(
    ("overrides", "precision"),
    [
        ({}, "fp32"),
        ({"fp16": True, "fp16_opt_level": "O0"}, "fp32"),
        ({"fp16": True, "fp16_opt_level": "O1"}, "fp16"),
        ({"fp16": True, "fp16_opt_level": "O2"}, "fp16"),
        ({"fp16": True, "fp16_opt_level": "O3"}, "fp16"),
        ({"fp16": False, "fp16_opt_level": "O2"}, "fp32"),
        ({"mixed_precision": "bf16"}, "bf16"),
        ({"mixed_precision": "fp16"}, "fp16"),
        ({"mixed_precision": "no"}, "fp32"),
        ({"fp16": True, "mixed_precision": "fp16"}, "fp16"),
    ],
)
def test_precision_resolves_fp16_opt_level_and_mixed_precision(overrides, precision, tmp_path):
    assert training(tmp_path, **overrides).precision == precision


# ---------------------------------------------------------------- validation messages


def raises_config_error(build, pattern, *fragments):
    """Asserts `build()` raises a ValueError (also a TypeError) matching `pattern` and `fragments`.

    Returns the message.
    """
    with pytest.raises(ValueError, match=pattern) as caught:
        build()
    assert isinstance(caught.value, TypeError)  # ConfigError is both, so either `except` works
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def known(*names):
    return [repr(name) for name in names]


@pytest.mark.parametrize(
    ("kwargs", "pattern", "fragments"),
    [
        (
            {"temperature_scheduler": "annealing"},
            r"`temperature_scheduler`='annealing' is not in TEMPERATURE_SCHEDULER",
            known("constant", "cwsm", "flsw"),
        ),
        (
            {"temperature_scheduler": ["annealing", 1.0]},
            r"`temperature_scheduler`.*'annealing'.*TEMPERATURE_SCHEDULER",
            known("constant", "cwsm", "flsw"),
        ),
        (
            {"kd_loss_type": "kl_div"},
            r"`kd_loss_type`='kl_div' is not in KD_LOSS_MAP",
            known("bce", "ce", "jsd", "kl", "mse", "reverse_kl"),
        ),
        (
            {"kd_loss_weight_scheduler": "cosine"},
            r"`kd_loss_weight_scheduler`='cosine' is not in WEIGHT_SCHEDULER",
            known("linear_decay", "linear_growth"),
        ),
        (
            {"hard_label_weight_scheduler": "step"},
            r"`hard_label_weight_scheduler`='step' is not in WEIGHT_SCHEDULER",
            known("linear_decay", "linear_growth"),
        ),
        (
            {"intermediate_matches": [match(feature="embeddings")]},
            r"`intermediate_matches\[0\]\.feature`='embeddings' is not in FEATURES",
            known("attention", "hidden"),
        ),
        (
            {"intermediate_matches": [match(), match(loss="l1")]},
            r"`intermediate_matches\[1\]\.loss`='l1' is not in MATCH_LOSS_MAP",
            known(*SINGLE_LAYER_LOSSES, *TWO_LAYER_LOSSES),
        ),
        (
            {"intermediate_matches": [match(proj=["conv", 4, 8])]},
            r"`intermediate_matches\[0\]\.proj\[0\]`='conv' is not in PROJ_MAP",
            known("linear", "relu", "tanh"),
        ),
    ],
    ids=[
        "temperature_scheduler",
        "temperature_scheduler_list",
        "kd_loss_type",
        "kd_loss_weight_scheduler",
        "hard_label_weight_scheduler",
        "feature",
        "match_loss",
        "projection",
    ],
)
def test_an_unknown_name_is_rejected_with_the_known_names_listed(kwargs, pattern, fragments):
    message = raises_config_error(lambda: DistillationConfig(**kwargs), pattern, *fragments)
    listed = re.findall(r"known: (.*)\)", message)[0]
    names = [name.strip() for name in listed.split(",")]
    assert names == sorted(names)  # listed sorted, so the list is easy to scan


@pytest.mark.parametrize(
    "proj",
    [["linear", 4], ["linear", 4, 8, {}, "extra"], [], "linear", ("linear",)],
    ids=["too_short", "too_long", "empty", "a_string", "one_element_tuple"],
)
def test_a_proj_of_the_wrong_length_or_type_is_rejected(proj):
    raises_config_error(
        lambda: DistillationConfig(intermediate_matches=[match(proj=proj)]),
        r"`intermediate_matches\[0\]\.proj`=.* must be a list \[kind, dim_in_student, "
        r"dim_out_teacher\]",
    )


@pytest.mark.parametrize(
    ("proj", "position", "value", "wanted"),
    [
        (["linear", 4.5, 8], 1, "4.5", "a whole number"),
        (["linear", 4, "8"], 2, "'8'", "an int"),
        (["linear", 0, 8], 1, "0", "an int >= 1"),
        (["linear", 4, -8], 2, "-8", "an int >= 1"),
    ],
)
def test_a_proj_with_a_dimension_that_is_not_a_positive_int_is_rejected(
    proj, position, value, wanted
):
    raises_config_error(
        lambda: DistillationConfig(intermediate_matches=[match(proj=proj)]),
        rf"`intermediate_matches\[0\]\.proj\[{position}\]`={re.escape(value)} must be {wanted}",
    )


@pytest.mark.parametrize("options", ["lr", [1e-3], 0.001])
def test_a_proj_whose_fourth_element_is_not_a_dict_is_rejected(options):
    raises_config_error(
        lambda: DistillationConfig(intermediate_matches=[match(proj=["linear", 4, 8, options])]),
        rf"`intermediate_matches\[0\]\.proj\[3\]`={re.escape(repr(options))} must be a dict",
    )


def test_proj_options_may_not_set_the_params_of_the_group():
    raises_config_error(
        lambda: DistillationConfig(
            intermediate_matches=[match(proj=["linear", 4, 8, {"params": []}])]
        ),
        r"`intermediate_matches\[0\]\.proj\[3\]` must not set 'params'",
    )


@pytest.mark.parametrize("loss", TWO_LAYER_LOSSES)
def test_a_two_layer_loss_given_single_layers_is_rejected(loss):
    message = raises_config_error(
        lambda: DistillationConfig(intermediate_matches=[match(loss=loss, layer_T=3, layer_S=1)]),
        rf"`intermediate_matches\[0\]\.layer_T`=3: loss '{loss}' takes a list of two layers",
    )
    assert f"`intermediate_matches[0].layer_S`=1: loss '{loss}'" in message


@pytest.mark.parametrize("loss", TWO_LAYER_LOSSES)
def test_a_two_layer_loss_given_a_pair_on_one_side_only_names_the_other_side(loss):
    message = raises_config_error(
        lambda: DistillationConfig(
            intermediate_matches=[match(loss=loss, layer_T=[0, 1], layer_S=1)]
        ),
        rf"`intermediate_matches\[0\]\.layer_S`=1: loss '{loss}' takes a list of two layers",
    )
    assert "layer_T`=[0, 1]" not in message


@pytest.mark.parametrize("loss", SINGLE_LAYER_LOSSES)
def test_a_single_layer_loss_given_a_pair_is_rejected(loss):
    feature = "attention" if loss.startswith("attention") else "hidden"
    raises_config_error(
        lambda: DistillationConfig(
            intermediate_matches=[match(loss=loss, feature=feature, layer_T=[0, 1], layer_S=2)]
        ),
        rf"`intermediate_matches\[0\]\.layer_T`=\[0, 1\]: loss '{loss}' takes a single int layer",
    )


@pytest.mark.parametrize(
    ("layer_T", "layer_S"), [(1, [0, 1]), ([0, 1], 1)], ids=["int_and_pair", "pair_and_int"]
)
def test_a_user_registered_loss_rejects_an_int_on_one_side_and_a_pair_on_the_other(
    registered, layer_T, layer_S
):
    raises_config_error(
        lambda: DistillationConfig(
            intermediate_matches=[match(loss="test_l1", layer_T=layer_T, layer_S=layer_S)]
        ),
        rf"`intermediate_matches\[0\]`: layer_T={re.escape(repr(layer_T))} and "
        rf"layer_S={re.escape(repr(layer_S))} must both be ints or both be lists of two ints",
    )


@pytest.mark.parametrize("layer", [[0, 1, 2], [0], "one", 1.5, True, [0, "x"], None], ids=repr)
def test_a_layer_that_is_neither_an_int_nor_a_pair_of_ints_is_rejected(layer):
    raises_config_error(
        lambda: DistillationConfig(intermediate_matches=[match(layer_S=layer)]),
        rf"`intermediate_matches\[0\]\.layer_S`={re.escape(repr(layer))} must be an int or a "
        "list of two ints",
    )


@pytest.mark.parametrize("missing", ["layer_T", "layer_S", "feature", "loss", "weight"])
def test_a_match_missing_a_required_key_names_the_key(missing):
    entry = match()
    del entry[missing]
    raises_config_error(
        lambda: DistillationConfig(intermediate_matches=[entry]),
        rf"`intermediate_matches\[0\]` is missing key\(s\) \['{missing}'\]",
    )


def test_a_match_missing_several_keys_names_all_of_them():
    raises_config_error(
        lambda: DistillationConfig(intermediate_matches=[match(), {"layer_T": 1, "weight": 1}]),
        r"`intermediate_matches\[1\]` is missing key\(s\) \['layer_S', 'feature', 'loss'\]",
    )


def test_an_empty_match_dict_is_rejected_naming_the_missing_keys():
    raises_config_error(
        lambda: DistillationConfig(intermediate_matches=[{}]),
        r"`intermediate_matches\[0\]` is missing key\(s\) "
        r"\['layer_T', 'layer_S', 'feature', 'loss', 'weight'\]",
    )


def test_a_match_with_an_unknown_key_is_kept_with_a_warning_naming_the_key():
    # TextBrewer 0.2.x ignored keys it did not read; so does this library, but it says so.
    with pytest.warns(
        UserWarning, match=r"`intermediate_matches\[0\]` has key\(s\) \['projection'\]"
    ):
        config = DistillationConfig(intermediate_matches=[match(projection=["linear", 4, 8])])
    assert config.intermediate_matches[0].proj is None
    assert "projection" not in config.intermediate_matches[0].to_dict()


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        ("hidden", r"`intermediate_matches`='hidden' must be a list of dicts"),
        ({"layer_T": 1}, r"`intermediate_matches`=\{'layer_T': 1\} must be a list of dicts"),
        (["hidden_mse"], r"`intermediate_matches\[0\]`='hidden_mse' must be a dict with keys"),
    ],
)
def test_intermediate_matches_that_are_not_a_list_of_dicts_are_rejected(value, pattern):
    raises_config_error(lambda: DistillationConfig(intermediate_matches=value), pattern)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("gradient_accumulation_steps", 0),
        ("gradient_accumulation_steps", -2),
        ("ckpt_frequency", 0),
        ("ckpt_frequency", -1),
        ("ckpt_epoch_frequency", 0),
        ("ckpt_epoch_frequency", -3),
    ],
)
def test_a_count_below_one_is_rejected(field, value, tmp_path):
    raises_config_error(
        lambda: training(tmp_path, **{field: value}), rf"`{field}`={value} must be an int >= 1"
    )


@pytest.mark.parametrize("value", [0, -5, 0.5, "2", None, True], ids=repr)
def test_a_ckpt_steps_below_one_or_not_a_number_is_rejected(value, tmp_path):
    if value is None:
        assert training(tmp_path, ckpt_steps=None).ckpt_steps is None
        return
    wanted = "must be a number of optimizer steps" if value in ("2", True) else "must be >= 1"
    raises_config_error(
        lambda: training(tmp_path, ckpt_steps=value),
        rf"`ckpt_steps`={re.escape(repr(value))} {wanted}",
    )


@pytest.mark.parametrize(
    "field", ["gradient_accumulation_steps", "ckpt_frequency", "ckpt_epoch_frequency"]
)
@pytest.mark.parametrize("value", [1.5, "2", False], ids=repr)
def test_a_count_that_is_a_fraction_a_string_or_false_is_rejected(field, value, tmp_path):
    wanted = {1.5: "a whole number", "2": "an int", False: "an int >= 1"}[value]
    shown = "0" if value is False else re.escape(repr(value))
    raises_config_error(
        lambda: training(tmp_path, **{field: value}), rf"`{field}`={shown} must be {wanted}"
    )


@pytest.mark.parametrize(
    "field", ["gradient_accumulation_steps", "ckpt_frequency", "ckpt_epoch_frequency"]
)
def test_a_rejected_training_config_does_not_create_output_dir(field, tmp_path):
    with pytest.raises(ValueError, match=field):
        TrainingConfig(device="cpu", output_dir=str(tmp_path / "never"), **{field: 0})
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("field", ["temperature", "hard_label_weight", "kd_loss_weight"])
@pytest.mark.parametrize("value", ["1", True, False, None, [1]], ids=repr)
def test_a_weight_or_temperature_that_is_not_a_number_is_rejected(field, value):
    raises_config_error(
        lambda: DistillationConfig(**{field: value}),
        rf"`{field}`={re.escape(repr(value))} must be a number \(int or float\)",
    )


@pytest.mark.parametrize("value", ["1", True, None], ids=repr)
def test_a_match_weight_that_is_not_a_number_is_rejected(value):
    raises_config_error(
        lambda: DistillationConfig(intermediate_matches=[match(weight=value)]),
        rf"`intermediate_matches\[0\]\.weight`={re.escape(repr(value))} must be a number",
    )


@pytest.mark.parametrize("value", [0, 0.0, -1, -0.5])
def test_a_temperature_that_is_not_positive_is_rejected(value):
    raises_config_error(
        lambda: DistillationConfig(temperature=value),
        rf"`temperature`={re.escape(repr(value))} must be a number > 0",
    )


@pytest.mark.parametrize("value", [0, -1.5, 0.0])
def test_zero_and_negative_loss_weights_are_accepted(value):
    config = DistillationConfig(
        hard_label_weight=value,
        kd_loss_weight=value,
        intermediate_matches=[match(weight=value)],
    )
    assert (config.kd_loss_weight, config.intermediate_matches[0].weight) == (value, value)


@pytest.mark.parametrize("name", ["flsw", "cwsm"])
def test_a_temperature_scheduler_builder_named_without_arguments_is_rejected(name):
    raises_config_error(
        lambda: DistillationConfig(temperature_scheduler=name),
        rf"`temperature_scheduler`='{name}' needs arguments: write it as a list",
        "['flsw', beta, gamma]",
        "['cwsm', beta]",
    )


@pytest.mark.parametrize(
    "value",
    [["cwsm"], ["cwsm", 1.0, 2.0], ["cwsm", {"gamma": 1.0}], ["flsw", 1.0], ["flsw"]],
    ids=repr,
)
def test_a_temperature_scheduler_with_arguments_that_do_not_fit_is_rejected(value):
    raises_config_error(
        lambda: DistillationConfig(temperature_scheduler=value),
        rf"`temperature_scheduler`={re.escape(repr(value))}: the arguments do not fit "
        rf"'{value[0]}'",
    )


@pytest.mark.parametrize("value", [[], [3, 1.0], 4.0], ids=repr)
def test_a_temperature_scheduler_that_is_not_a_name_or_a_list_is_rejected(value):
    raises_config_error(
        lambda: DistillationConfig(temperature_scheduler=value),
        rf"`temperature_scheduler`={re.escape(repr(value))} must be 'none', a name, or a list",
    )


@pytest.mark.parametrize(
    "value",
    [["flsw", 1.0, 2.0], ("flsw", 1, 1), ["flsw", {"beta": 1, "gamma": 2}], ["cwsm", 0.5]],
    ids=repr,
)
def test_temperature_schedulers_with_fitting_arguments_are_accepted_and_kept_as_lists(value):
    config = DistillationConfig(temperature_scheduler=value)
    assert config.temperature_scheduler == list(value)


@pytest.mark.parametrize("field", ["probability_shift", "is_caching_logits"])
@pytest.mark.parametrize("value", [2, "yes", "False", None], ids=repr)
def test_a_flag_that_is_not_a_bool_is_rejected(field, value):
    raises_config_error(
        lambda: DistillationConfig(**{field: value}),
        rf"`{field}`={re.escape(repr(value))} must be True or False",
    )


@pytest.mark.parametrize("field", ["fp16", "data_parallel", "save_training_state", "progress_bar"])
def test_a_training_flag_that_is_not_a_bool_is_rejected(field, tmp_path):
    raises_config_error(
        lambda: training(tmp_path, **{field: "yes"}), rf"`{field}`='yes' must be True or False"
    )


@pytest.mark.parametrize("level", ["bf16", "no"])
def test_fp16_true_with_another_mixed_precision_is_rejected(level, tmp_path):
    raises_config_error(
        lambda: training(tmp_path, fp16=True, mixed_precision=level),
        rf"`fp16`=True contradicts `mixed_precision`='{level}'",
    )


def test_an_unknown_mixed_precision_is_rejected_with_the_choices(tmp_path):
    raises_config_error(
        lambda: training(tmp_path, mixed_precision="fp8"),
        r"`mixed_precision`='fp8' is not allowed",
        *known("bf16", "fp16", "no"),
    )


@pytest.mark.parametrize("level", ["O4", "o1", "1", None], ids=repr)
def test_an_unknown_fp16_opt_level_is_rejected_with_the_choices(level, tmp_path):
    raises_config_error(
        lambda: training(tmp_path, fp16_opt_level=level),
        rf"`fp16_opt_level`={re.escape(repr(level))} is not allowed",
        *known("O0", "O1", "O2", "O3"),
    )


@pytest.mark.parametrize("device", ["gpu", 3.5, None], ids=repr)
def test_a_device_that_is_not_a_device_is_rejected(device, tmp_path):
    raises_config_error(
        lambda: training(tmp_path, device=device),
        rf"`device`={re.escape(repr(device))} is not a device",
    )


@pytest.mark.parametrize("config_class", [TrainingConfig, DistillationConfig])
def test_from_dict_with_an_unknown_key_names_the_key(config_class, tmp_path):
    settings = {"output_dir": str(tmp_path / "out")} if config_class is TrainingConfig else {}
    settings["num_epochs"] = 3
    raises_config_error(
        lambda: config_class.from_dict(settings),
        rf"{config_class.__name__}: unknown key\(s\) 'num_epochs'",
    )


def test_from_json_file_with_an_unknown_key_names_the_key(tmp_path):
    path = tmp_path / "distill.json"
    path.write_text('{"temperature": 4, "temprature_scheduler": "none"}', encoding="utf-8")
    raises_config_error(
        lambda: DistillationConfig.from_json_file(path), r"unknown key\(s\) 'temprature_scheduler'"
    )


def test_from_dict_rejects_something_that_is_not_a_dict():
    with pytest.raises(TypeError, match=r"DistillationConfig\.from_dict expects a dict, got list"):
        DistillationConfig.from_dict([("temperature", 4)])


def test_several_problems_of_a_distillation_config_are_reported_in_one_message():
    message = raises_config_error(
        lambda: DistillationConfig(
            temperature=0,
            kd_loss_type="kl_div",
            kd_loss_weight_scheduler="cosine",
            intermediate_matches=[match(feature="embeddings"), match(weight="heavy")],
        ),
        r"^DistillationConfig: 5 problems:\n",
        "`temperature`=0",
        "`kd_loss_type`='kl_div'",
        "`kd_loss_weight_scheduler`='cosine'",
        "`intermediate_matches[0].feature`='embeddings'",
        "`intermediate_matches[1].weight`='heavy'",
    )
    assert len(message.splitlines()) == 6
    assert all(line.startswith("  - ") for line in message.splitlines()[1:])


def test_several_problems_of_a_training_config_are_reported_in_one_message(tmp_path):
    raises_config_error(
        lambda: training(
            tmp_path, gradient_accumulation_steps=0, ckpt_steps=0.5, fp16_opt_level="O9"
        ),
        r"^TrainingConfig: 3 problems:\n",
        "`gradient_accumulation_steps`=0",
        "`ckpt_steps`=0.5",
        "`fp16_opt_level`='O9'",
    )


# ---------------------------------------------------------------- registered names


def test_names_registered_before_building_the_config_are_accepted(registered):
    config = DistillationConfig(
        temperature_scheduler="test_fixed",
        kd_loss_weight_scheduler="test_halfway",
        hard_label_weight_scheduler="test_halfway",
        intermediate_matches=[
            match(loss="test_l1"),
            match(loss="test_l1", layer_T=[0, 1], layer_S=[1, 2]),
        ],
    )
    assert [m.loss for m in config.intermediate_matches] == ["test_l1", "test_l1"]
    assert DistillationConfig.from_dict(config.to_dict()) == config


def test_a_registered_loss_is_unknown_again_once_removed():
    presets.MATCH_LOSS_MAP["test_gone"] = lambda S, T, mask=None: (S - T).mean()
    try:
        DistillationConfig(intermediate_matches=[match(loss="test_gone")])
    finally:
        del presets.MATCH_LOSS_MAP["test_gone"]
    raises_config_error(
        lambda: DistillationConfig(intermediate_matches=[match(loss="test_gone")]),
        r"'test_gone' is not in MATCH_LOSS_MAP",
    )


def test_a_registered_feature_name_is_accepted():
    presets.FEATURES.append("test_embeddings")
    try:
        config = DistillationConfig(intermediate_matches=[match(feature="test_embeddings")])
    finally:
        presets.FEATURES.remove("test_embeddings")
    assert config.intermediate_matches[0].feature == "test_embeddings"


# ---------------------------------------------------------------- nothing is mutated


def test_building_a_config_does_not_change_the_dicts_it_is_given():
    settings = {
        "temperature_scheduler": ("flsw", 1, 2),
        "intermediate_matches": [
            match(proj=["linear", 4, 8]),
            match(layer_T=(0, 1), layer_S=(0, 1), loss="nst", proj=("relu", 4, 8, {"lr": 0.1})),
        ],
    }
    before = copy.deepcopy(settings)
    DistillationConfig.from_dict(settings)
    DistillationConfig(**settings)
    assert settings == before
    assert settings["intermediate_matches"][0]["proj"] == ["linear", 4, 8]


def test_building_a_config_from_another_configs_matches_leaves_the_first_unchanged():
    first = DistillationConfig(intermediate_matches=[match(proj=["linear", 4, 8, {"lr": 0.1}])])
    before = first.to_dict()
    second = DistillationConfig(intermediate_matches=first.intermediate_matches, temperature=2)
    second.intermediate_matches[0].proj[3]["lr"] = 0.5
    second.intermediate_matches[0].weight = 7
    assert first.to_dict() == before


def test_to_dict_returns_copies_that_do_not_write_back_into_the_config():
    config = DistillationConfig(
        temperature_scheduler=["flsw", 1.0, 2.0],
        intermediate_matches=[match(layer_T=[0, 1], layer_S=[0, 1], loss="fsp")],
    )
    before = config.to_dict()
    plain = config.to_dict()
    plain["temperature_scheduler"][1] = 9.0
    plain["intermediate_matches"][0]["layer_T"][0] = 5
    assert config.to_dict() == before


def test_building_distillers_from_the_configs_does_not_mutate_either_config(tmp_path):
    # Training with weight schedules is covered by tests/distillers/test_loop.py; building is
    # checked here without an optimizer, so this file stays fast.
    teacher, student = make_models(dtype=torch.float32)
    train_config = training(tmp_path, progress_bar=False, ckpt_frequency=2)
    distill_config = DistillationConfig(
        temperature=3,
        temperature_scheduler=("flsw", 1.0, 1.0),
        hard_label_weight=0.5,
        hard_label_weight_scheduler="linear_growth",
        kd_loss_weight_scheduler="linear_decay",
        intermediate_matches=[
            match(layer_T=3, layer_S=2, proj=["linear", 8, 8]),
            match(layer_T=[0, 1], layer_S=[0, 1], loss="fsp", weight=0.5),
        ],
    )
    train_before, distill_before = train_config.to_dict(), distill_config.to_dict()
    text_before = str(distill_config)
    for _ in range(2):
        distiller = GeneralDistiller(
            train_config, distill_config, teacher, student, simple_adaptor, simple_adaptor
        )
        total, _ = distiller.train_on_batch(make_batches(1)[0], {})
        assert torch.isfinite(total)
    assert train_config.to_dict() == train_before
    assert distill_config.to_dict() == distill_before
    assert str(distill_config) == text_before


# ---------------------------------------------------------------- checkpoint lifecycle fields


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"save_total_limit": 0}, "`save_total_limit`=0 must be an int >= 1"),
        ({"eval_steps": 2.5}, "`eval_steps`=2.5 must be a whole number"),
        ({"metric_for_best_model": 3}, "`metric_for_best_model`=3 must be the name (str)"),
        ({"greater_is_better": "yes", "metric_for_best_model": "f1"}, "`greater_is_better`='yes'"),
        ({"early_stopping_threshold": -0.1}, "`early_stopping_threshold`=-0.1 must be >= 0"),
        ({"log_train_scalars": 2}, "`log_train_scalars`=2 must be True or False"),
        (
            {"early_stopping_patience": 3},
            "`early_stopping_patience`=3 needs `metric_for_best_model`",
        ),
    ],
)
def test_lifecycle_fields_are_validated(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainingConfig(output_dir=str(tmp_path), **overrides)


def test_greater_is_better_without_a_metric_warns(tmp_path):
    with pytest.warns(UserWarning, match="`greater_is_better` has no effect"):
        TrainingConfig(output_dir=str(tmp_path), greater_is_better=False)


def test_lifecycle_fields_round_trip(tmp_path):
    config = TrainingConfig(
        output_dir=str(tmp_path),
        eval_steps=5,
        save_total_limit=2,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        early_stopping_patience=3,
        early_stopping_threshold=0.01,
        log_train_scalars=True,
    )
    assert TrainingConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
