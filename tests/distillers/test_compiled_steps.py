"""TrainingConfig(torch_compile=...): compiled student and teacher forwards, equal to eager.

Most tests compile with the ``aot_eager`` backend: the same graph capture as inductor (dynamo and
AOTAutograd, forward and backward graphs) without generating C++, so they take seconds. One test
compiles with inductor itself, on the smallest models; it needs a C++ compiler.
"""

import json
import os
import shutil
import socket

import pytest
import torch

import textbrewer
from tests.conftest import checkpoint_steps, make_batches, make_models, simple_adaptor
from textbrewer._compiling import COMPILE_KEYS

dynamo = pytest.importorskip("torch._dynamo")
if not dynamo.is_dynamo_supported():
    pytest.skip(
        "torch.compile (dynamo) does not support this Python version", allow_module_level=True
    )

# Importing dynamo imports torch.jit code that warns about its own deprecation; not ours.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")

AOT = {"backend": "aot_eager"}
MATCHES = [
    {"layer_T": 3, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
     "proj": ["linear", 6, 8]},
    {"layer_T": 1, "layer_S": 0, "feature": "attention", "loss": "attention_mse", "weight": 0.5},
]  # fmt: skip


def general_distiller(tmp_path, name, torch_compile, model_S=None, **config):
    teacher, student = make_models(dtype=torch.float32, teacher_dim=8, student_dim=6)
    settings = dict(device="cpu", output_dir=str(tmp_path / name), progress_bar=False, ckpt_steps=2)
    settings.update(config)
    distiller = textbrewer.GeneralDistiller(
        textbrewer.TrainingConfig(torch_compile=torch_compile, **settings),
        textbrewer.DistillationConfig(hard_label_weight=0.5, intermediate_matches=MATCHES),
        teacher,
        student if model_S is None else model_S(student),
        simple_adaptor,
        simple_adaptor,
    )
    return distiller, student


def train(distiller, student, steps=4, **kwargs):
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    return distiller.train(
        optimizer,
        None,
        make_batches(3),
        None,
        num_steps=steps,
        scheduler_class=torch.optim.lr_scheduler.StepLR,
        scheduler_args={"step_size": 2},
        **kwargs,
    )


def assert_same_weights(trained, reference):
    assert trained.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(trained[key], value, rtol=1e-5, atol=1e-6)


def test_compiled_steps_train_like_eager_and_save_the_plain_students_state_dict(tmp_path):
    eager, eager_student = general_distiller(tmp_path, "eager", False)
    compiled, compiled_student = general_distiller(tmp_path, "compiled", AOT)
    seen = []
    eager_result = train(eager, eager_student)
    dynamo.reset()
    result = train(compiled, compiled_student, callback=lambda model, step: seen.append(model))
    # Really compiled: dynamo captured the teacher's (no_grad) and the student's forwards.
    assert dynamo.utils.counters["stats"]["unique_graphs"] >= 2
    assert_same_weights(compiled_student.state_dict(), eager_student.state_dict())
    torch.testing.assert_close(
        compiled.projs[0].weight, eager.projs[0].weight, rtol=1e-5, atol=1e-6
    )
    assert result.last_losses == pytest.approx(eager_result.last_losses, rel=1e-5)
    # The models stay plain: checkpoints and the callback see the student, not a compiled wrapper.
    assert checkpoint_steps(tmp_path / "compiled") == [2, 4]
    saved = torch.load(tmp_path / "compiled" / "gs4.pkl")
    assert list(saved) == list(eager_student.state_dict())
    assert_same_weights(saved, compiled_student.state_dict())
    assert all(model is compiled_student for model in seen)
    # One compiled forward per model (teacher, student), reused at every step.
    compiled_forwards = compiled._compiled._compiled
    assert {id(entry[0]) for entry in compiled_forwards.values()} == {
        id(compiled.model_T),
        id(compiled_student),
    }


def test_a_second_train_call_reuses_the_compiled_forwards(tmp_path):
    distiller, student = general_distiller(tmp_path, "twice", AOT)
    train(distiller, student, steps=2)
    first = {key: entry[1] for key, entry in distiller._compiled._compiled.items()}
    train(distiller, student, steps=2)
    second = {key: entry[1] for key, entry in distiller._compiled._compiled.items()}
    assert first.keys() == second.keys()
    assert all(first[key] is second[key] for key in first)


def test_a_compiled_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    full, full_student = general_distiller(tmp_path, "full", AOT, save_training_state=True)
    train(full, full_student, steps=4)
    stopped, stopped_student = general_distiller(tmp_path, "part", AOT, save_training_state=True)
    train(stopped, stopped_student, steps=2)
    resumed, resumed_student = general_distiller(tmp_path, "part", AOT, save_training_state=True)
    train(resumed, resumed_student, steps=4, resume_from=tmp_path / "part" / "gs2.pkl")
    assert_same_weights(resumed_student.state_dict(), full_student.state_dict())


def test_a_student_given_compiled_is_saved_without_the_orig_mod_prefix(tmp_path):
    distiller, student = general_distiller(
        tmp_path, "given", False, model_S=lambda model: torch.compile(model, backend="aot_eager")
    )
    train(distiller, distiller.model_S, steps=2)
    saved = torch.load(tmp_path / "given" / "gs2.pkl")
    assert list(saved) == list(student.state_dict())
    assert not any(key.startswith("_orig_mod.") for key in saved)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_under_ddp_the_wrapper_is_compiled_and_released_and_training_matches_eager(
    tmp_path, monkeypatch
):
    for name, value in dict(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1"
    ).items():
        monkeypatch.setenv(name, value)
    eager, eager_student = general_distiller(tmp_path, "eager", False)
    train(eager, eager_student)
    distiller, student = general_distiller(tmp_path, "ddp", AOT, local_rank=0)
    compiled_modules = []
    forward_of = distiller._compiled.forward_of
    monkeypatch.setattr(
        distiller._compiled,
        "forward_of",
        lambda module: compiled_modules.append(type(module).__name__) or forward_of(module),
    )
    seen = []
    train(distiller, student, callback=lambda model, step: seen.append(type(model).__name__))
    # DDP first, then compile (the DDP wrapper is what runs compiled); the teacher is not wrapped.
    assert set(compiled_modules) == {"DistributedDataParallel", "TinyEncoder"}
    assert seen == ["DistributedDataParallel", "DistributedDataParallel"]
    assert [entry[0] for entry in distiller._compiled._compiled.values()] == [distiller.model_T]
    assert_same_weights(student.state_dict(), eager_student.state_dict())
    assert list(torch.load(tmp_path / "ddp" / "gs4.pkl")) == list(student.state_dict())


def _cpp_compiler():
    candidates = [os.environ.get("CXX"), "g++", "c++", "clang++"]
    return next((found for name in candidates if name and (found := shutil.which(name))), None)


@pytest.mark.slow
@pytest.mark.skipif(
    _cpp_compiler() is None,
    reason="torch.compile's inductor backend needs a C++ compiler on the CPU (none of $CXX, "
    "g++, c++, clang++ was found)",
)
def test_inductor_compiled_steps_equal_eager_within_round_off(tmp_path):
    class Classifier(torch.nn.Linear):
        def forward(self, features, labels):
            return super().forward(features)

    def run(name, torch_compile):
        torch.manual_seed(0)
        teacher, student = Classifier(4, 3), Classifier(4, 3)
        generator = torch.Generator().manual_seed(1)
        data = [
            (torch.randn(8, 4, generator=generator), torch.randint(0, 3, (8,), generator=generator))
            for _ in range(3)
        ]
        distiller = textbrewer.BasicDistiller(
            textbrewer.TrainingConfig(
                device="cpu",
                output_dir=str(tmp_path / name),
                progress_bar=False,
                torch_compile=torch_compile,
            ),
            textbrewer.DistillationConfig(temperature=2, hard_label_weight=0.5),
            teacher,
            student,
            lambda batch, outputs: {"logits": outputs},
            lambda batch, outputs: {
                "logits": outputs,
                "losses": torch.nn.functional.cross_entropy(outputs, batch[1]),
            },
        )
        optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
        distiller.train(optimizer, None, data, 1)
        return student

    assert_same_weights(run("inductor", True).state_dict(), run("eager", False).state_dict())


# ------------------------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("yes", r"`torch_compile`='yes' must be True, False, or a dict of torch.compile keyword"),
        (1, r"`torch_compile`=1 must be True, False, or a dict"),
        ({"modes": "default"}, r"unknown key\(s\) 'modes' \(known: 'backend', 'disable'"),
        ({"mode": "fastest"}, r"`torch_compile\['mode'\]`='fastest' is not a torch.compile mode"),
        ({"fullgraph": 1}, r"`torch_compile\['fullgraph'\]`=1 must be True or False"),
        ({"dynamic": "auto"}, r"`torch_compile\['dynamic'\]`='auto' must be True, False or None"),
        ({"backend": len}, r"`torch_compile\['backend'\]`=<built-in function len> must be the"),
        ({"options": ["x"]}, r"`torch_compile\['options'\]`=\['x'\] must be a dict"),
        (
            {"mode": "max-autotune", "options": {"epilogue_fusion": True}},
            r"gives both 'mode'='max-autotune' and 'options'",
        ),
    ],
)
def test_a_bad_torch_compile_value_is_a_config_error_naming_it(tmp_path, value, message):
    with pytest.raises(textbrewer.ConfigError, match=message):
        textbrewer.TrainingConfig(device="cpu", output_dir=str(tmp_path), torch_compile=value)


def test_torch_compile_with_data_parallel_is_a_config_error(tmp_path):
    with pytest.raises(textbrewer.ConfigError, match=r"does not combine with `data_parallel`=True"):
        textbrewer.TrainingConfig(
            device="cpu", output_dir=str(tmp_path), torch_compile=True, data_parallel=True
        )


def test_an_unknown_backend_is_named_when_the_distiller_is_built(tmp_path):
    with pytest.raises(ValueError, match=r"`torch_compile\['backend'\]`='inductr' is not a torch"):
        general_distiller(tmp_path, "bad", {"backend": "inductr"})


@pytest.mark.parametrize(
    "value", [False, True, {}, {"mode": "max-autotune", "dynamic": False, "fullgraph": True}]
)
def test_torch_compile_round_trips_through_dict_json_and_str(tmp_path, value):
    config = textbrewer.TrainingConfig(device="cpu", output_dir=str(tmp_path), torch_compile=value)
    assert textbrewer.TrainingConfig.from_dict(config.to_dict()) == config
    config.to_json_file(tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["torch_compile"] == value
    assert textbrewer.TrainingConfig.from_json_file(tmp_path / "config.json") == config
    assert f"torch_compile : {value}" in str(config).splitlines()


def test_the_documented_keys_are_torch_compiles_keyword_arguments():
    import inspect

    parameters = inspect.signature(torch.compile).parameters
    assert set(COMPILE_KEYS) <= set(parameters)
