"""A 0.2.x subclass (the EMD distiller's protocol) runs unchanged: its projections train, are
checked against a float64 reference, and are resumed bit for bit."""

import torch
from compat_reference import assert_same_state, kd_ce, load_script, run_script

from tests.conftest import checkpoint_steps


def _emd_reference():
    torch.set_default_dtype(torch.float64)
    try:
        script = load_script("emd_subclass")
        teacher, student = script["build_models"](0)
        projs = [torch.nn.Linear(6, 8) for _ in range(2)]  # created in the subclass's __init__
        initial = [proj.weight.detach().clone() for proj in projs]
        data = script["make_data"](4)
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
        for proj, lr in zip(projs, (0.05, 0.02)):  # one group per projection, as 0.2.x
            optimizer.add_param_group({"params": proj.parameters(), "lr": lr})
        saved, step = {}, 0
        for _ in range(2):
            for batch in data:
                with torch.no_grad():
                    logits_T, hidden_T, _ = teacher(**batch)
                logits_S, hidden_S, hard = student(**batch)
                mask = batch["attention_mask"].unsqueeze(-1)
                emd = 0
                for proj, h_S in zip(projs, hidden_S):
                    for h_T in hidden_T:
                        emd = emd + ((proj(h_S) - h_T) ** 2 * mask).sum() / (mask.sum() * 8)
                emd = emd / 6
                loss = kd_ce(logits_S, logits_T, 4) + emd + 0.5 * hard
                loss.backward()
                torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad()
                step += 1
                if step % 4 == 0:
                    saved[step] = {k: v.detach().clone() for k, v in student.state_dict().items()}
        return saved, projs, initial
    finally:
        torch.set_default_dtype(torch.float32)


def test_an_emd_like_subclass_trains_its_own_projections_as_0_2_x(tmp_path):
    result = run_script("emd_subclass", "--output_dir", tmp_path / "out")["RESULT"]
    assert checkpoint_steps(tmp_path / "out") == [4, 8]
    expected, projs, initial = _emd_reference()
    for step in (4, 8):
        assert_same_state(torch.load(tmp_path / "out" / f"gs{step}.pkl"), expected[step])
    for trained, reference, start in zip(result.projs, projs, initial):
        assert not torch.equal(reference.weight, start)  # the projections did train
        torch.testing.assert_close(trained.weight, reference.weight, rtol=1e-10, atol=1e-12)
    assert [group["lr"] for group in result.projs_group] == [0.05, 0.02]
    assert result.d_config.is_caching_logits is False  # set by the subclass through d_config


def test_an_emd_like_subclass_resumes_its_projections_bit_for_bit(tmp_path):
    whole = run_script("emd_subclass", "--output_dir", tmp_path / "whole", "--save_training_state")[
        "RESULT"
    ]
    resumed = run_script(
        "emd_subclass",
        "--output_dir",
        tmp_path / "resumed",
        "--save_training_state",
        "--resume_from",
        tmp_path / "whole" / "gs4.pkl",
    )["RESULT"]
    assert checkpoint_steps(tmp_path / "resumed") == [8]
    final = torch.load(tmp_path / "resumed" / "gs8.pkl")
    for key, value in torch.load(tmp_path / "whole" / "gs8.pkl").items():
        assert torch.equal(final[key], value), key
    for a, b in zip(whole.projs, resumed.projs):
        assert torch.equal(a.weight, b.weight)
        assert torch.equal(a.bias, b.bias)
    saved = torch.load(tmp_path / "whole" / "gs4.state.pt", weights_only=False)
    assert len(saved["parts"]["extra_modules"]["modules"]) == 2  # the projections are saved
