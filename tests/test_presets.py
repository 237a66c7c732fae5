"""The registries of presets.py, register_new, and the names `import textbrewer` exposes."""

import importlib
import warnings

import pytest
import torch
from packaging.version import Version

import textbrewer
from textbrewer import losses, presets, projections, schedulers

SPEC_KEYS = {
    "KD_LOSS_MAP": {"ce", "mse", "kl", "reverse_kl", "jsd", "bce"},
    "MATCH_LOSS_MAP": {
        "attention_mse_sum",
        "attention_mse",
        "attention_ce_mean",
        "attention_ce",
        "hidden_mse",
        "cos",
        "pkd",
        "gram",
        "fsp",
        "mmd",
        "nst",
    },
    "PROJ_MAP": {"linear", "relu", "tanh"},
    "WEIGHT_SCHEDULER": {"linear_decay", "linear_growth"},
    "TEMPERATURE_SCHEDULER": {"constant", "flsw", "cwsm"},
}
MAP_NAMES = {
    "kd_loss": "KD_LOSS_MAP",
    "match_Loss": "MATCH_LOSS_MAP",
    "projection": "PROJ_MAP",
    "weight_scheduler": "WEIGHT_SCHEDULER",
    "temperature_scheduler": "TEMPERATURE_SCHEDULER",
}
PUBLIC_NAMES = [
    "__version__",
    "TrainingConfig",
    "DistillationConfig",
    "BasicTrainer",
    "BasicDistiller",
    "GeneralDistiller",
    "MultiTeacherDistiller",
    "MultiTaskDistiller",
    "FEATURES",
    "ADAPTOR_KEYS",
    "KD_LOSS_MAP",
    "MATCH_LOSS_MAP",
    "PROJ_MAP",
    "WEIGHT_SCHEDULER",
    "TEMPERATURE_SCHEDULER",
    "register_new",
    "Distillers",
]


def logits_pair():
    generator = torch.Generator().manual_seed(0)
    return (
        torch.randn(5, 4, generator=generator, dtype=torch.float64),
        torch.randn(5, 4, generator=generator, dtype=torch.float64),
    )


def make_function(name):
    def function(*args, **kwargs):
        return name

    return function


# ---------------------------------------------------------------- the registries' contents


@pytest.mark.parametrize(("registry", "keys"), SPEC_KEYS.items(), ids=SPEC_KEYS.keys())
def test_each_registry_has_exactly_the_spec_keys(registry, keys):
    assert set(getattr(presets, registry)) == keys


@pytest.mark.parametrize("registry", SPEC_KEYS)
def test_every_registry_entry_is_callable(registry):
    for name, function in getattr(presets, registry).items():
        assert callable(function), name


def test_features_and_adaptor_keys_are_the_spec_lists():
    assert presets.FEATURES == ["hidden", "attention"]
    assert presets.ADAPTOR_KEYS == [
        "logits",
        "logits_mask",
        "losses",
        "inputs_mask",
        "labels",
        "hidden",
        "attention",
    ]


@pytest.mark.parametrize("registry", ["MATCH_LOSS_MAP", "PROJ_MAP", "WEIGHT_SCHEDULER"])
def test_the_registries_are_plain_dicts(registry):
    assert type(getattr(presets, registry)) is dict


def test_kd_loss_map_is_a_dict_that_builds_losses_with_options():
    registry = presets.KD_LOSS_MAP
    assert isinstance(registry, dict)
    assert registry["ce"] is losses.kd_ce_loss  # plain lookups are untouched
    assert ["jsd", 0.3] in registry
    assert ["nope", 1] not in registry
    S, T = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    for key in (["jsd", 0.3], ("jsd", 0.3), ["jsd", {"beta": 0.3}]):
        built = registry[key]
        assert built.supports_logits_mask
        assert torch.equal(built(S, T, 2.0), losses.kd_jsd_loss(S, T, 2.0, beta=0.3))
    with pytest.raises(TypeError, match=r"KD_LOSS_MAP\['ce'\] takes no arguments"):
        registry[["ce", 2]]
    with pytest.raises(ValueError, match="beta"):
        registry[["jsd", 1.5]]
    with pytest.raises(KeyError):
        registry[["nope", 1]]


def test_temperature_scheduler_is_a_dict_subclass():
    assert isinstance(presets.TEMPERATURE_SCHEDULER, dict)
    assert type(presets.TEMPERATURE_SCHEDULER) is not dict


def test_fsp_and_gram_are_one_loss_and_nst_and_mmd_are_one_loss():
    assert presets.MATCH_LOSS_MAP["fsp"] is presets.MATCH_LOSS_MAP["gram"]
    assert presets.MATCH_LOSS_MAP["nst"] is presets.MATCH_LOSS_MAP["mmd"]
    assert presets.MATCH_LOSS_MAP["fsp"] is not presets.MATCH_LOSS_MAP["nst"]


def test_projections_and_weight_schedulers_are_the_library_functions():
    assert presets.PROJ_MAP["linear"] is projections.linear_projection
    assert presets.PROJ_MAP["relu"] is projections.relu_projection
    assert presets.PROJ_MAP["tanh"] is projections.tanh_projection
    assert presets.WEIGHT_SCHEDULER["linear_decay"](0.25) == 0.75
    assert presets.WEIGHT_SCHEDULER["linear_growth"](0.25) == 0.25


@pytest.mark.parametrize("registry", SPEC_KEYS)
def test_a_registry_is_extended_by_assignment(registry):
    mapping = getattr(presets, registry)
    function = make_function("mine")
    mapping["test_mine"] = function
    try:
        assert mapping["test_mine"] is function
        assert "test_mine" in mapping
    finally:
        del mapping["test_mine"]
    assert "test_mine" not in mapping


# ---------------------------------------------------------------- TEMPERATURE_SCHEDULER lookups


def test_a_flsw_list_lookup_builds_the_scheduler_with_those_arguments():
    logits_S, logits_T = logits_pair()
    built = presets.TEMPERATURE_SCHEDULER[["flsw", 1.5, 2.0]]
    expected = schedulers.flsw_temperature_scheduler_builder(1.5, 2.0)(logits_S, logits_T, 4.0)
    assert torch.equal(built(logits_S, logits_T, 4.0), expected)
    other = schedulers.flsw_temperature_scheduler_builder(1.0, 1.0)(logits_S, logits_T, 4.0)
    assert not torch.allclose(expected, other)  # the arguments really reached the builder


def test_a_flsw_lookup_with_a_kwargs_dict_equals_the_positional_lookup():
    logits_S, logits_T = logits_pair()
    by_name = presets.TEMPERATURE_SCHEDULER[["flsw", {"beta": 1.5, "gamma": 2.0}]]
    by_position = presets.TEMPERATURE_SCHEDULER[["flsw", 1.5, 2.0]]
    assert torch.equal(by_name(logits_S, logits_T, 4.0), by_position(logits_S, logits_T, 4.0))


def test_a_cwsm_list_or_tuple_lookup_builds_the_scheduler():
    logits_S, logits_T = logits_pair()
    expected = schedulers.cwsm_temperature_scheduler_builder(0.5)(logits_S, logits_T, 2.0)
    for key in (["cwsm", 0.5], ("cwsm", 0.5)):
        built = presets.TEMPERATURE_SCHEDULER[key]
        assert torch.equal(built(logits_S, logits_T, 2.0), expected)


def test_a_name_lookup_returns_the_registered_object_unchanged():
    registry = presets.TEMPERATURE_SCHEDULER
    assert registry["constant"] is schedulers.constant_temperature_scheduler
    assert registry["flsw"] is schedulers.flsw_temperature_scheduler_builder
    assert registry["cwsm"] is schedulers.cwsm_temperature_scheduler_builder
    assert registry["constant"](torch.zeros(2, 3), torch.zeros(2, 3), 4.0) == 4.0


def test_membership_of_a_list_tests_its_first_element():
    registry = presets.TEMPERATURE_SCHEDULER
    assert ["flsw", 1, 1] in registry
    assert ("cwsm", 1) in registry
    assert "constant" in registry
    assert ["annealing", 1] not in registry
    assert "annealing" not in registry
    assert [] not in registry


def test_unknown_or_empty_list_lookups_raise_key_error():
    with pytest.raises(KeyError, match="annealing"):
        presets.TEMPERATURE_SCHEDULER[["annealing", 1.0]]
    with pytest.raises(KeyError):
        presets.TEMPERATURE_SCHEDULER[[]]


def test_a_builder_assigned_to_temperature_scheduler_is_called_by_a_list_lookup():
    def scaled(factor):
        return lambda logits_S, logits_T, base: base * factor

    presets.TEMPERATURE_SCHEDULER["test_scaled"] = scaled
    try:
        assert presets.TEMPERATURE_SCHEDULER[["test_scaled", 3]](None, None, 2.0) == 6.0
        assert presets.TEMPERATURE_SCHEDULER[["test_scaled", {"factor": 0.5}]](None, None, 2.0) == 1
        assert presets.TEMPERATURE_SCHEDULER["test_scaled"] is scaled
    finally:
        del presets.TEMPERATURE_SCHEDULER["test_scaled"]


# ---------------------------------------------------------------- MAPS and register_new


def test_maps_holds_the_five_registries_themselves():
    assert set(presets.MAPS) == set(MAP_NAMES)
    for map_name, registry in MAP_NAMES.items():
        assert presets.MAPS[map_name] is getattr(presets, registry)


@pytest.mark.parametrize(("map_name", "registry"), MAP_NAMES.items(), ids=MAP_NAMES.keys())
def test_register_new_adds_the_function_to_the_named_registry_only(map_name, registry):
    function = make_function("new")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a new name must not warn
        textbrewer.register_new(map_name, "test_new", function)
    try:
        assert dict.__getitem__(getattr(presets, registry), "test_new") is function
        for other in MAP_NAMES.values():
            if other != registry:
                assert "test_new" not in getattr(presets, other)
    finally:
        del getattr(presets, registry)["test_new"]


def test_a_name_registered_with_register_new_is_accepted_by_a_config():
    textbrewer.register_new("match_Loss", "test_l2", lambda S, T, mask=None: ((S - T) ** 2).sum())
    try:
        config = textbrewer.DistillationConfig(
            intermediate_matches=[
                {"layer_T": 1, "layer_S": 1, "feature": "hidden", "loss": "test_l2", "weight": 1}
            ]
        )
    finally:
        del presets.MATCH_LOSS_MAP["test_l2"]
    assert config.intermediate_matches[0].loss == "test_l2"


@pytest.mark.parametrize("func", [None, 3, "hidden_mse", [len]], ids=repr)
def test_register_new_rejects_a_non_callable_naming_the_name(func):
    with pytest.raises(TypeError, match=r"`func` registered as 'test_bad' in 'kd_loss'.*callable"):
        textbrewer.register_new("kd_loss", "test_bad", func)
    assert "test_bad" not in presets.KD_LOSS_MAP


def test_register_new_rejects_an_unknown_map_listing_the_maps():
    with pytest.raises(KeyError) as caught:
        textbrewer.register_new("match_loss", "test_x", make_function("x"))
    message = str(caught.value)
    assert "'match_loss'" in message
    for map_name in MAP_NAMES:
        assert repr(map_name) in message
    assert "test_x" not in presets.MATCH_LOSS_MAP


@pytest.mark.parametrize("name", [1, None, ("a", "b")], ids=repr)
def test_register_new_rejects_a_name_that_is_not_a_string(name):
    with pytest.raises(TypeError, match=r"`name` must be a str"):
        textbrewer.register_new("weight_scheduler", name, make_function("x"))
    assert name not in presets.WEIGHT_SCHEDULER


@pytest.mark.parametrize(
    ("map_name", "registry", "name"),
    [
        ("kd_loss", "KD_LOSS_MAP", "ce"),
        ("match_Loss", "MATCH_LOSS_MAP", "hidden_mse"),
        ("projection", "PROJ_MAP", "linear"),
        ("weight_scheduler", "WEIGHT_SCHEDULER", "linear_decay"),
        ("temperature_scheduler", "TEMPERATURE_SCHEDULER", "flsw"),
    ],
)
def test_register_new_warns_when_it_replaces_a_built_in(map_name, registry, name):
    mapping = getattr(presets, registry)
    original = dict.__getitem__(mapping, name)
    replacement = make_function("replacement")
    try:
        with pytest.warns(UserWarning, match=rf"replaces the built-in '{name}' of '{map_name}'"):
            textbrewer.register_new(map_name, name, replacement)
        assert dict.__getitem__(mapping, name) is replacement
    finally:
        mapping[name] = original
    assert dict.__getitem__(mapping, name) is original


def test_register_new_does_not_warn_when_replacing_a_users_own_entry():
    textbrewer.register_new("weight_scheduler", "test_mine", make_function("a"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            textbrewer.register_new("weight_scheduler", "test_mine", make_function("b"))
        assert presets.WEIGHT_SCHEDULER["test_mine"]() == "b"
    finally:
        del presets.WEIGHT_SCHEDULER["test_mine"]


# ---------------------------------------------------------------- import textbrewer


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_import_textbrewer_exposes_every_spec_name(name):
    assert hasattr(textbrewer, name)


def test_the_top_level_registries_are_the_presets_objects():
    for name in SPEC_KEYS:
        assert getattr(textbrewer, name) is getattr(presets, name)
    assert textbrewer.FEATURES is presets.FEATURES
    assert textbrewer.ADAPTOR_KEYS is presets.ADAPTOR_KEYS
    assert textbrewer.register_new is presets.register_new


def test_maps_is_a_top_level_name_and_sees_what_register_new_adds():
    from textbrewer import MAPS

    assert MAPS is presets.MAPS
    assert "MAPS" in textbrewer.__all__
    textbrewer.register_new("match_Loss", "test_via_maps", make_function("m"))
    try:
        assert MAPS["match_Loss"]["test_via_maps"]() == "m"
    finally:
        del presets.MATCH_LOSS_MAP["test_via_maps"]


def test_distillers_maps_the_five_short_names_to_the_classes():
    assert textbrewer.Distillers == {
        "Basic": textbrewer.BasicDistiller,
        "General": textbrewer.GeneralDistiller,
        "MultiTeacher": textbrewer.MultiTeacherDistiller,
        "MultiTask": textbrewer.MultiTaskDistiller,
        "Train": textbrewer.BasicTrainer,
    }
    assert all(isinstance(value, type) for value in textbrewer.Distillers.values())


def test_version_is_a_pep_440_string_at_least_0_2_1():
    assert isinstance(textbrewer.__version__, str)
    version = Version(textbrewer.__version__)  # raises InvalidVersion when not PEP 440
    assert version >= Version("0.2.1")


@pytest.mark.parametrize(
    "module", ["configurations", "distillers", "presets", "losses", "utils", "data_utils"]
)
def test_the_spec_submodules_import(module):
    imported = importlib.import_module(f"textbrewer.{module}")
    assert getattr(textbrewer, module, imported) is imported
