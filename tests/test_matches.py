"""IntermediateMatch: the optional `teacher` key of multi-teacher matches, checked and kept."""

import json

import pytest

from textbrewer import DistillationConfig
from textbrewer._validation import ConfigError


def match(**overrides):
    entry = {"layer_T": 2, "layer_S": 1, "feature": "hidden", "loss": "hidden_mse", "weight": 1}
    entry.update(overrides)
    return entry


def test_teacher_index_is_stored_on_the_match_and_defaults_to_none():
    config = DistillationConfig(intermediate_matches=[match(teacher=1), match()])
    assert [m.teacher for m in config.intermediate_matches] == [1, None]
    assert config.intermediate_matches[0]["teacher"] == 1


def test_teacher_index_round_trips_through_to_dict_and_json(tmp_path):
    config = DistillationConfig(
        intermediate_matches=[match(teacher=0), match(teacher=2, proj=["linear", 4, 8])]
    )
    plain = config.to_dict()
    assert [m["teacher"] for m in plain["intermediate_matches"]] == [0, 2]
    assert DistillationConfig.from_dict(plain) == config
    path = tmp_path / "distill.json"
    config.to_json_file(path)
    assert json.loads(path.read_text(encoding="utf-8"))["intermediate_matches"][1]["teacher"] == 2
    assert DistillationConfig.from_json_file(path) == config


def test_a_match_without_teacher_writes_the_same_dict_as_0_2():
    plain = DistillationConfig(intermediate_matches=[match()]).to_dict()
    assert sorted(plain["intermediate_matches"][0]) == [
        "feature",
        "layer_S",
        "layer_T",
        "loss",
        "proj",
        "weight",
    ]


@pytest.mark.parametrize("value", [-1, 1.0, "0", True, [0]])
def test_a_teacher_that_is_not_a_non_negative_int_is_refused(value):
    with pytest.raises(ConfigError) as error:
        DistillationConfig(intermediate_matches=[match(teacher=value)])
    message = str(error.value)
    assert f"`intermediate_matches[0].teacher`={value!r}" in message
    assert "index in `model_T`" in message


def test_a_bad_teacher_is_reported_with_the_other_problems():
    with pytest.raises(ConfigError, match="2 problems") as error:
        DistillationConfig(intermediate_matches=[match(teacher=-2, weight="x")])
    assert "teacher" in str(error.value)
    assert "weight" in str(error.value)
