"""mednca.nn.unet: the UNet baselines behind MedNCA's interface, through the same pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mednca.nn.build import build_model, load_model
from mednca.nn.unet import UNET_FEATURES, UNetBaseline
from mednca.cli import main
from mednca.config import MedNCAConfig
from mednca.errors import CheckpointError, ConfigError
from mednca.nn.model import MedNCA


def _small(**overrides) -> MedNCAConfig:
    values = dict(model="unet-small", image_size=16, patch_size=8, batch_size=4, epochs=1,
                  interpolation="linear")
    return MedNCAConfig(**{**values, **overrides})


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_parameter_counts() -> None:
    with torch.device("meta"):  # no memory or init time for the 31 M weights
        paper = UNetBaseline(MedNCAConfig.preset("hippocampus", model="unet"))
    small = build_model(MedNCAConfig.preset("hippocampus", model="unet-small"))
    nca = build_model(MedNCAConfig.preset("hippocampus"))
    assert isinstance(nca, MedNCA) and isinstance(small, UNetBaseline)
    assert paper.num_parameters() == 31_112_065 and 25e6 < paper.num_parameters() < 40e6
    assert small.num_parameters() == 31_481 and 20_000 <= small.num_parameters() <= 70_000
    assert nca.num_parameters() == 25_920
    assert set(UNET_FEATURES) == {"unet", "unet-small"}


def test_config_model_field() -> None:
    assert MedNCAConfig().model == "mednca"
    cfg = _small()
    assert MedNCAConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="model must be one of"):
        MedNCAConfig(model="resnet")
    with pytest.raises(ConfigError, match="image_size >= 16"):
        MedNCAConfig(model="unet-small", image_size=8, patch_size=8)
    with pytest.raises(ConfigError, match="UNetBaseline needs"):
        UNetBaseline(MedNCAConfig())


def test_forward_shapes_and_whole_image_training() -> None:
    model = UNetBaseline(_small(), generator=torch.Generator().manual_seed(0))
    images = torch.rand(2, 1, 16, 24)
    labels = (images > 0.5).float()
    assert model(images).shape == (2, 1, 16, 24)
    logits, target = model(images, labels, generator=torch.Generator())
    assert logits.shape == (2, 1, 16, 24) and target is labels  # the whole slice, not a patch
    model.eval()
    mean, std = model.predict_proba(images, ensemble=5)
    assert mean.shape == std.shape == (2, 1, 16, 24)
    assert torch.all(std == 0) and torch.all((mean >= 0) & (mean <= 1))
    assert torch.equal(mean, model.predict_proba(images)[0])  # deterministic
    with pytest.raises(ValueError, match="must be"):
        model(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match=">= 16"):
        model(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="must match"):
        model(images, labels[:, :, :8])
    with pytest.raises(ValueError, match="ensemble"):
        model.predict_proba(images, ensemble=0)


def test_seeded_init_leaves_global_rng_alone() -> None:
    before = torch.random.get_rng_state()
    a = UNetBaseline(_small(), generator=torch.Generator().manual_seed(7))
    b = UNetBaseline(_small(), generator=torch.Generator().manual_seed(7))
    c = UNetBaseline(_small(), generator=torch.Generator().manual_seed(8))
    assert torch.equal(before, torch.random.get_rng_state())
    assert _same_weights(a, b) and not _same_weights(a, c)
    # build_model seeds the same way for both model types
    assert _same_weights(build_model(_small(), torch.Generator().manual_seed(7)), a)
    m1 = build_model(MedNCAConfig(), torch.Generator().manual_seed(1))
    m2 = build_model(MedNCAConfig(), torch.Generator().manual_seed(1))
    assert _same_weights(m1, m2)


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = UNetBaseline(_small(), generator=torch.Generator().manual_seed(0))
    model(torch.rand(4, 1, 16, 16))  # train-mode pass: batch-norm statistics move
    path = model.save(tmp_path / "unet.safetensors", epoch="3")
    loaded = load_model(path)
    assert isinstance(loaded, UNetBaseline) and not loaded.training
    assert loaded.config == model.config and _same_weights(model, loaded)
    x = torch.rand(2, 1, 16, 16)
    assert torch.equal(model.eval()(x), loaded(x))
    assert isinstance(UNetBaseline.load(path), UNetBaseline)
    with pytest.raises(CheckpointError, match="not a MedNCA"):  # MedNCA.load returns a MedNCA or raises
        MedNCA.load(path)
    nca_path = MedNCA(MedNCAConfig(channels=4, hidden=8)).save(tmp_path / "nca.safetensors")
    with pytest.raises(CheckpointError, match="not a UNet"):
        UNetBaseline.load(nca_path)


def test_export_refuses_unet(tmp_path: Path) -> None:
    from mednca.edge.export import ExportError, export_model

    with pytest.raises(ExportError, match="Med-NCA models only"):
        export_model(UNetBaseline(_small()), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_train_evaluate_resume(tmp_path: Path, synthetic_task: Path) -> None:
    from mednca.pipeline.evaluate import evaluate_run
    from mednca.pipeline.predict import predict_file
    from mednca.pipeline.train import train

    quiet = dict(progress=False, log=lambda s: None)
    result = train(synthetic_task, tmp_path / "run", _small(epochs=2), seed=0, **quiet)
    assert isinstance(result.model, UNetBaseline) and result.epochs_done == 2
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"] == "unet-small"
    assert isinstance(load_model(tmp_path / "run"), UNetBaseline)
    results, path = evaluate_run(tmp_path / "run")
    assert path.name == "eval_test.json" and 0.0 <= results["summary"]["dice"]["mean"] <= 1.0
    image = next((synthetic_task / "imagesTr").glob("*.nii.gz"))
    written = predict_file(result.model, image, tmp_path / "mask.nii.gz", ensemble=3)
    assert len(written) == 3 and all(p.is_file() for p in written)
    # a run cut after 1 epoch and resumed equals the uninterrupted run
    train(synthetic_task, tmp_path / "cut", _small(epochs=1), seed=0, **quiet)
    resumed = train(synthetic_task, tmp_path / "cut", seed=0, epochs=2, resume=True, **quiet)
    assert _same_weights(resumed.model, result.model)


def test_cli_train_model_unet_small(tmp_path: Path, synthetic_task: Path, capsys) -> None:
    run = tmp_path / "run"
    tiny = ["--preset", "demo", "--set", "image_size=16", "--set", "patch_size=8", "--epochs", "1",
            "--no-progress"]
    assert main(["train", "--data", str(synthetic_task), "--out", str(run), "--model", "unet-small", *tiny]) == 0
    assert json.loads((run / "config.json").read_text())["model"] == "unet-small"
    assert main(["info", str(run)]) == 0
    assert "31,481 parameters" in capsys.readouterr().out
    image = next((synthetic_task / "imagesTr").glob("*.nii.gz"))
    assert main(["predict", str(run), str(image), "-o", str(tmp_path / "m.nii.gz")]) == 0
    assert (tmp_path / "m.nii.gz").is_file()
    assert main(["evaluate", str(run)]) == 0
    assert (run / "eval_test.json").is_file()
    capsys.readouterr()
    assert main(["export", str(run), "-o", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mednca: error: ") and "Med-NCA models only" in err
    with pytest.raises(SystemExit):
        main(["train", "--data", str(synthetic_task), "--out", str(run), "--model", "vgg"])
