"""Edge export: ONNX / TorchScript parity with eager PyTorch, the onnx runtime path, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

from mednca.cli import main  # noqa: E402
from mednca.errors import MedNCAError, OutputExistsError  # noqa: E402
from mednca.edge.export import (ExportError, ExportModule, OnnxSegmenter, draw_noise, export_model,  # noqa: E402
                           onnx_benchmark)
from mednca.nn.model import MedNCA  # noqa: E402
from mednca.pipeline.predict import predict_slices, predict_volume  # noqa: E402

@pytest.fixture(scope="module")
def model(random_model) -> MedNCA:
    return random_model()


@pytest.fixture(scope="module")
def onnx_path(model: MedNCA, tmp_path_factory) -> Path:
    """The default export: fire masks drawn inside the graph."""
    return export_model(model, tmp_path_factory.mktemp("onnx") / "model.onnx")


def ort_run(path: Path, **feeds: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {k: v.numpy() for k, v in feeds.items()})[0]


def images(b: int = 2, h: int = 24, w: int = 32, seed: int = 1) -> torch.Tensor:
    """Non-square and not image_size: exercises the dynamic batch/height/width axes."""
    return torch.rand((b, 1, h, w), generator=torch.Generator().manual_seed(seed))


def test_onnx_parity_with_explicit_noise(model: MedNCA, tmp_path: Path) -> None:
    """The full stochastic two-level computation, same random numbers on both sides."""
    path = export_model(model, tmp_path / "noise.onnx", explicit_noise=True)
    x = images()
    noise1, noise2 = draw_noise(model.config, 2, 24, 32, torch.Generator().manual_seed(7))
    assert noise1.shape == (3, 2, 1, 6, 8) and noise2.shape == (3, 2, 1, 24, 32)
    with torch.no_grad():  # the sparse gather/scatter path, fire masks from the same stream
        eager = model(x, generator=torch.Generator().manual_seed(7)).numpy()
    got = ort_run(path, images=x, noise1=noise1, noise2=noise2)
    assert got.shape == (2, 1, 24, 32) and eager.std() > 0.1
    np.testing.assert_allclose(got, eager, atol=1e-4, rtol=0)
    other = ort_run(path, images=x, noise1=torch.rand_like(noise1), noise2=torch.rand_like(noise2))
    assert np.abs(other - eager).max() > 1e-2  # the masks matter, so the parity above means something


@pytest.mark.parametrize("fire_rate", [1.0, 0.0])
def test_onnx_parity_deterministic_fire_rates(fire_rate: float, tmp_path: Path, random_model) -> None:
    """The default (in-graph random) export is exact when every cell fires, or none."""
    model = random_model(fire_rate)
    path = export_model(model, tmp_path / "m.onnx")
    x = images()
    with torch.no_grad():
        eager = model(x).numpy()
    np.testing.assert_allclose(ort_run(path, images=x), eager, atol=1e-4, rtol=0)
    assert (eager.std() > 0.1) if fire_rate == 1.0 else not eager.any()


def test_onnx_stochastic_output_and_metadata(model: MedNCA, onnx_path: Path) -> None:
    import onnx

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = images(b=3).numpy()
    a, b = (session.run(["logits"], {"images": x})[0] for _ in range(2))
    assert a.shape == b.shape == (3, 1, 24, 32)
    assert np.isfinite(a).all() and np.isfinite(b).all()
    assert np.abs(a - b).max() > 1e-3  # fresh fire masks per run
    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert json.loads(meta["mednca_config"]) == model.config.to_dict()
    assert meta["mednca_noise"] == "graph" and meta["mednca_version"]
    runner = OnnxSegmenter(onnx_path)
    assert runner.config == model.config


def test_onnx_runtime_predict_matches_torch(tmp_path: Path, random_model) -> None:
    """predict_slices with the onnx runtime == predict_volume with torch (all cells fire)."""
    model = random_model(1.0)
    runner = OnnxSegmenter(export_model(model, tmp_path / "m.onnx"))
    volume = np.random.default_rng(0).normal(size=(20, 18, 5)).astype(np.float32)
    ref = predict_volume(model, volume)
    got = predict_slices(runner.infer(ensemble=2, seed=0), volume, runner.config, batch_size=3)
    np.testing.assert_allclose(got.probability, ref.probability, atol=1e-5)
    assert got.std.max() < 1e-5  # deterministic model: the two passes agree


def test_onnx_infer_seed_is_reproducible(onnx_path: Path) -> None:
    runner = OnnxSegmenter(onnx_path)
    x = images(b=2, h=16, w=16)
    m1, s1 = runner.infer(3, seed=5)(x)
    m2, s2 = runner.infer(3, seed=5)(x)
    m3, _ = runner.infer(3, seed=6)(x)
    torch.testing.assert_close(m1, m2, rtol=0, atol=0)
    assert s1.max() > 0 and (m1 - m3).abs().max() > 1e-4
    assert m1.shape == s1.shape == (2, 1, 16, 16)


def test_torchscript_parity_and_standalone_load(model: MedNCA, onnx_path: Path, tmp_path: Path) -> None:
    path = export_model(model, tmp_path / "model.pt", "torchscript")
    x = images()
    traced = torch.jit.load(str(path))
    torch.manual_seed(3)  # both draw their fire masks from torch's global generator, same order
    got = traced(x)
    torch.manual_seed(3)
    with torch.no_grad():
        eager = model(x)
    torch.testing.assert_close(got, eager, atol=1e-4, rtol=0)
    # A fresh interpreter in which mednca cannot be imported: plain torch and onnxruntime only.
    script = (
        "import sys, json; sys.modules['mednca'] = None\n"
        "import torch, numpy as np, onnxruntime as ort\n"
        "files = {'mednca.json': ''}\n"
        f"m = torch.jit.load({str(path)!r}, _extra_files=files)\n"
        "y = m(torch.rand(3, 1, 16, 24))\n"
        f"s = ort.InferenceSession({str(onnx_path)!r}, providers=['CPUExecutionProvider'])\n"
        "z = s.run(None, {'images': np.random.rand(1, 1, 32, 32).astype(np.float32)})[0]\n"
        "assert not any(k.startswith('mednca') and sys.modules[k] for k in sys.modules)\n"
        "print(json.dumps([list(y.shape), bool(torch.isfinite(y).all()), list(z.shape),\n"
        "                  json.loads(json.loads(files['mednca.json'])['mednca_config'])['steps']]))\n")
    out = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [[3, 1, 16, 24], True, [1, 1, 32, 32], 3]


def test_export_module_dense_matches_sparse(model: MedNCA) -> None:
    x = images()
    noise = draw_noise(model.config, 2, 24, 32, torch.Generator().manual_seed(2))
    with torch.no_grad():
        dense = ExportModule(model, explicit_noise=True)(x, *noise)
        sparse = model(x, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(dense, sparse, atol=1e-5, rtol=0)


def test_missing_onnx_says_how_to_install(model: MedNCA, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    with pytest.raises(MedNCAError, match=r'pip install "mednca\[export\]"'):
        export_model(model, tmp_path / "m.onnx")
    with pytest.raises(MedNCAError, match=r"mednca\[export\]"):
        OnnxSegmenter(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_unknown_format_and_overwrite(model: MedNCA, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export_model(model, tmp_path / "m.tflite", "tflite")
    target = tmp_path / "m.pt"
    target.write_bytes(b"old")
    with pytest.raises(OutputExistsError, match="already exists"):
        export_model(model, target, "torchscript")
    assert target.read_bytes() == b"old"
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path), "--format", "tflite"])


def test_onnx_benchmark_is_callable(onnx_path: Path) -> None:
    result = onnx_benchmark(onnx_path, size=16, repeats=2, warmup=1)
    assert result["file_bytes"] == onnx_path.stat().st_size > 0
    assert result["ms_per_slice"] > 0 and result["size"] == 16


# -- the command line ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny3_config) -> tuple[Path, Path]:
    """(a NIfTI image, a tiny trained run folder)."""
    from mednca.data.synthetic import make_synthetic_dataset
    from mednca.pipeline.train import train

    root = tmp_path_factory.mktemp("export_cli")
    data = make_synthetic_dataset(root / "data", n_cases=6, shape=(20, 20, 6))
    train(data, root / "run", tiny3_config, progress=False, log=lambda s: None)
    return sorted((data / "imagesTr").glob("*.nii.gz"))[0], root / "run"


def test_cli_export_then_predict_onnx(run: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    image, run_dir = run
    assert main(["export", str(run_dir), "--format", "onnx"]) == 0
    onnx_file = run_dir / "checkpoints" / "best.onnx"
    assert onnx_file.is_file() and "bytes" in capsys.readouterr().out
    mask = tmp_path / "mask.nii.gz"
    assert main(["predict", str(onnx_file), str(image), "-o", str(mask), "--runtime", "onnx"]) == 0
    ref, got = nib.load(str(image)), nib.load(str(mask))
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got.affine, ref.affine)
    assert set(np.unique(np.asanyarray(got.dataobj)).tolist()) <= {0, 1}
    out = tmp_path / "ens.nii.gz"
    assert main(["predict", str(onnx_file), str(image), "-o", str(out), "--runtime", "onnx",
                 "--ensemble", "2"]) == 0
    assert nib.load(str(tmp_path / "ens_std.nii.gz")).shape == ref.shape
    # refusing to overwrite, then --overwrite
    capsys.readouterr()
    assert main(["export", str(run_dir)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--overwrite"]) == 0
    # an .onnx file needs --runtime onnx
    assert main(["predict", str(onnx_file), str(image), "-o", str(tmp_path / "x.nii.gz")]) == 1
    assert "--runtime onnx" in capsys.readouterr().err


def test_cli_export_torchscript(run: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    assert main(["export", str(run[1]), "--format", "torchscript", "-o", str(out)]) == 0
    assert torch.jit.load(str(out))(torch.rand(1, 1, 16, 16)).shape == (1, 1, 16, 16)


def test_every_export_uses_only_the_allowed_operators(model: MedNCA, tmp_path: Path) -> None:
    import onnx

    from mednca.edge.export import EXPORTED_OPS

    for noise in (False, True):
        for weights in ("fp32", "fp16", "int8"):
            path = export_model(model, tmp_path / f"m-{noise}-{weights}.onnx", explicit_noise=noise, weights=weights)
            assert {n.op_type for n in onnx.load(str(path)).graph.node} <= EXPORTED_OPS


def test_a_hostile_onnx_graph_or_metadata_is_refused(onnx_path: Path, tmp_path: Path) -> None:
    """A Loop could run unboundedly; malformed metadata was a traceback."""
    import onnx
    from onnx import helper

    from mednca.errors import CheckpointError

    proto = onnx.load(str(onnx_path))
    proto.graph.node.append(helper.make_node("Loop", ["a", "b"], ["c"], body=helper.make_graph([], "g", [], [])))
    looped = tmp_path / "loop.onnx"
    looped.write_bytes(proto.SerializeToString())
    with pytest.raises(CheckpointError, match="operators mednca never exports \\(Loop\\)"):
        OnnxSegmenter(looped)
    for text, fragment in (("{not json", "config is invalid"), ("[1]", "expected a JSON object"),
                           ('{"steps": 1000000000}', "steps must be an integer from 1 to 1024")):
        proto = onnx.load(str(onnx_path))
        for prop in proto.metadata_props:
            if prop.key == "mednca_config":
                prop.value = text
        bad = tmp_path / "meta.onnx"
        bad.write_bytes(proto.SerializeToString())
        with pytest.raises(CheckpointError, match=fragment):
            OnnxSegmenter(bad)


def test_onnx_parity_with_more_coarse_steps(tmp_path: Path, random_model) -> None:
    """``coarse_steps``: level 1 runs its own number of steps, in eager PyTorch and in ONNX alike."""
    model = random_model()
    model.config = model.config.replace(coarse_steps=5)
    path = export_model(model, tmp_path / "coarse.onnx", explicit_noise=True)
    x = images()
    noise1, noise2 = draw_noise(model.config, 2, 24, 32, torch.Generator().manual_seed(7))
    assert noise1.shape[0] == 5 and noise2.shape[0] == model.config.steps
    with torch.no_grad():
        eager = model(x, generator=torch.Generator().manual_seed(7)).numpy()
        fewer = model.__class__(model.config.replace(coarse_steps=0))
        fewer.load_state_dict(model.state_dict())
        other = fewer(x, generator=torch.Generator().manual_seed(7)).numpy()
    np.testing.assert_allclose(ort_run(path, images=x, noise1=noise1, noise2=noise2), eager, atol=1e-4, rtol=0)
    assert np.abs(other - eager).max() > 1e-2  # the extra level-1 steps change the output
