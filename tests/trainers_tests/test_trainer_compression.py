"""Compression knobs through the image trainer: pruning, QAT, distillation, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgetune.errors import InvalidSpecError
from edgetune.search.trial_process import export_fit
from edgetune.search.validation import validate_job_spec
from edgetune.spec import JobSpec, TrainerSpec
from edgetune.trainers import get_trainer_class
from edgetune.trainers.export import count_params

MOBILENET = {
    "arch": "mobilenet", "width_mult": 1.0, "s1_blocks": 1, "s2_blocks": 1, "s3_blocks": 1,
    "s1_channels": 16, "s2_channels": 24, "s3_channels": 32, "s1_expand": 6, "s2_expand": 6,
    "s3_expand": 6, "lr": 0.01,
}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fit(params, *, epochs=2, checkpoint_dir=None, tmp=None, **options):
    spec = TrainerSpec(name="image-classifier", epochs=epochs, seed=0, options=options)
    trainer = get_trainer_class("image-classifier")(spec, data_dir=tmp, cache_dir=tmp)
    reports: list[tuple[int, float]] = []
    result = trainer.fit(params, report=lambda e, m: reports.append((e, m["accuracy"])),
                         checkpoint_dir=checkpoint_dir)
    return result, reports


@pytest.mark.slow  # trains for seconds
def test_channel_pruning_shrinks_the_model_and_fine_tunes(tmp_path: Path) -> None:
    dense, _ = fit(MOBILENET)
    pruned, reports = fit({**MOBILENET, "prune": "channel", "prune_amount": 0.5})
    assert [e for e, _ in reports] == [1, 2, 3]  # the fine-tuning epoch is reported too
    assert count_params(pruned.model) < 0.7 * count_params(dense.model)
    assert pruned.compression == {"quantization": "fp32", "prune": "channel",
                                  "prune_amount": 0.5, "finetune_epochs": 1,
                                  "prune_criterion": "l1"}
    a_dense, m_dense, _ = export_fit(dense, tmp_path)
    a_pruned, m_pruned, _ = export_fit(pruned, tmp_path)
    assert a_pruned.size_bytes < 0.7 * a_dense.size_bytes
    assert m_pruned["flops"] < m_dense["flops"]
    assert m_pruned["accuracy"] > 0.5


def test_channel_pruning_a_network_without_hidden_channels_changes_nothing() -> None:
    # Every expansion ratio 1: no block has hidden channels to remove. A search may well
    # sample that with prune=channel; the trial must not fail for it.
    plain = {**MOBILENET, "s1_expand": 1, "s2_expand": 1, "s3_expand": 1}
    dense, _ = fit(plain, epochs=1)
    pruned, _ = fit({**plain, "prune": "channel", "prune_amount": 0.5}, epochs=1)
    assert count_params(pruned.model) == count_params(dense.model)
    assert pruned.metrics["pruned_channels"] == 0


@pytest.mark.slow  # trains for seconds
def test_magnitude_pruning_reaches_its_sparsity() -> None:
    result, _ = fit({**MOBILENET, "prune": "magnitude", "prune_amount": 0.6})
    assert result.metrics["sparsity"] == pytest.approx(0.6, abs=0.01)


@pytest.mark.slow  # trains for seconds
def test_int8_static_export_runs_in_onnxruntime_close_to_fp32(tmp_path: Path) -> None:
    fp32, _ = fit(MOBILENET, epochs=3)
    int8, _ = fit({**MOBILENET, "quantization": "int8-static"}, epochs=3)
    a32, m32, _ = export_fit(fp32, tmp_path)
    a8, m8, attrs = export_fit(int8, tmp_path)
    assert a8.size_bytes < 0.7 * a32.size_bytes  # small model: QDQ scales weigh in
    assert attrs["torch_accuracy"] == pytest.approx(m32["accuracy"], abs=1e-9)
    assert abs(m8["accuracy"] - m32["accuracy"]) <= 0.03  # the stated tolerance: 3 points


@pytest.mark.slow  # trains for seconds
def test_qat_fine_tunes_with_fake_quantization_then_exports_int8(tmp_path: Path) -> None:
    result, reports = fit({**MOBILENET, "quantization": "qat"})
    assert len(reports) == 3
    _, metrics, _ = export_fit(result, tmp_path)
    assert metrics["accuracy"] > 0.5
    assert not any("FakeQuant" in type(m).__name__ for m in result.model.modules())


@pytest.mark.slow  # trains for seconds
def test_distillation_trains_the_builtin_teacher_once_per_job(tmp_path: Path) -> None:
    params = {**MOBILENET, "distill_alpha": 0.7, "distill_temperature": 4.0}
    first, _ = fit(params, tmp=tmp_path, teacher="builtin")
    cached = list((tmp_path / "teachers").glob("*.npy"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    logits = np.load(cached[0])
    assert logits.shape[1] == 10 and (logits.argmax(1) >= 0).all()
    second, _ = fit(params, tmp=tmp_path, teacher="builtin")
    assert cached[0].stat().st_mtime_ns == stamp  # reused, not retrained
    assert first.metrics["accuracy"] == second.metrics["accuracy"]
    assert first.compression["distill_alpha"] == 0.7


@pytest.mark.slow  # trains for seconds
def test_distillation_from_a_users_onnx_model(tmp_path: Path) -> None:
    teacher, _ = fit(MOBILENET)
    artifact, _, _ = export_fit(teacher, tmp_path / "artifacts")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "teacher.onnx").write_bytes(artifact.path.read_bytes())
    student, _ = fit({**MOBILENET, "width_mult": 0.5, "distill_alpha": 0.5}, tmp=tmp_path,
                     teacher="teacher.onnx")
    assert student.metrics["accuracy"] > 0.3
    with pytest.raises(Exception, match="does not exist"):
        fit({**MOBILENET, "distill_alpha": 0.5}, tmp=tmp_path, teacher="missing.onnx")


@pytest.mark.slow  # trains for seconds
def test_a_resumed_fit_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    straight, _ = fit(MOBILENET, epochs=3)
    fit(MOBILENET, epochs=1, checkpoint_dir=tmp_path)
    resumed, reports = fit(MOBILENET, epochs=3, checkpoint_dir=tmp_path)
    assert [e for e, _ in reports] == [2, 3]  # epoch 1 came from the checkpoint
    assert resumed.metrics["accuracy"] == straight.metrics["accuracy"]
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


def spec(**space) -> JobSpec:
    return JobSpec.model_validate({
        "name": "knobs", "trainer": {"name": "image-classifier", "dataset": "digits"},
        "space": {"name": "mobilenet", **space},
        "objectives": [{"name": "accuracy"}],
    })


@pytest.mark.parametrize(("param", "rule"), [
    ({"type": "categorical", "name": "quantization", "choices": ["fp32", "int4"]},
     "quantization can be 'int4'"),
    ({"type": "fixed", "name": "prune", "value": "random"}, "prune can be 'random'"),
    ({"type": "float", "name": "prune_amount", "low": 0.1, "high": 0.99},
     "prune_amount can be 0.99"),
    ({"type": "fixed", "name": "arch", "value": "vit"}, "arch can be 'vit'"),
])
def test_bad_knob_values_are_refused_at_submission(param, rule) -> None:
    with pytest.raises(InvalidSpecError, match=rule):
        validate_job_spec(spec(params=[param]))


def test_channel_pruning_is_refused_for_the_mlp() -> None:
    job = JobSpec.model_validate({
        "name": "mlp-channels", "trainer": {"name": "tabular-classifier", "dataset": "iris"},
        "space": {"name": "mlp", "params": [{"type": "fixed", "name": "prune",
                                              "value": "channel"}]},
        "objectives": [{"name": "accuracy"}],
    })
    with pytest.raises(InvalidSpecError, match=r"takes only none, magnitude"):
        validate_job_spec(job)


def test_a_teacher_path_outside_the_models_directory_is_refused() -> None:
    with pytest.raises(InvalidSpecError, match=r"trainer\.options\.teacher"):
        get_trainer_class("image-classifier").validate_spec(
            TrainerSpec(name="image-classifier", options={"teacher": "../../etc/x.onnx"})
        )


@pytest.mark.slow  # trains for seconds
def test_distillation_changes_what_the_student_learns(tmp_path: Path) -> None:
    def run(alpha: float):
        spec = TrainerSpec(name="tabular-classifier", dataset="wine", epochs=3, seed=0,
                           options={"teacher": "builtin"})
        trainer = get_trainer_class("tabular-classifier")(spec, data_dir=tmp_path,
                                                          cache_dir=tmp_path)
        return trainer.fit({"n_layers": 1, "width": 16, "distill_alpha": alpha},
                           report=lambda e, m: None)

    plain, distilled = run(0.0), run(0.9)
    assert "distill_alpha" not in plain.compression
    assert distilled.compression["distill_alpha"] == 0.9
    assert any(not torch.equal(a, b) for a, b in zip(
        plain.model.state_dict().values(), distilled.model.state_dict().values(), strict=True))
