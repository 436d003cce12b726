"""The mednca command end to end (in-process via main), and its one-line error messages."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mednca.cli import main
from mednca.data.synthetic import make_synthetic_dataset

COMMANDS = ("demo", "train", "predict", "evaluate", "download", "presets", "info")
TINY = ["--preset", "demo", "--set", "image_size=16", "--set", "patch_size=8", "--set", "steps=3",
        "--set", "hidden=16", "--set", "channels=8", "--epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(task folder, run folder) of a tiny run trained through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    data = make_synthetic_dataset(root / "data", n_cases=6, shape=(20, 20, 6))
    assert main(["train", "--data", str(data), "--out", str(root / "run"), *TINY]) == 0
    return data, root / "run"


def assert_error(capsys, rc: int, *fragments: str) -> str:
    captured = capsys.readouterr()
    assert rc == 1
    err = captured.err.strip()
    assert err.startswith("mednca: error: ")
    assert "\n" not in err and "Traceback" not in captured.err
    for fragment in fragments:
        assert fragment in err
    return err


def test_help_subprocess() -> None:
    proc = subprocess.run(["mednca", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for command in COMMANDS:
        assert command in proc.stdout


def test_no_command_prints_help(capsys) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_version(capsys) -> None:
    from mednca import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"mednca {__version__}"


def test_presets(capsys) -> None:
    from mednca.config import PRESETS

    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(PRESETS)
    assert main(["presets", "demo"]) == 0
    demo = json.loads(capsys.readouterr().out)
    assert demo["image_size"] == 32 and demo["interpolation"] == "linear"


def test_train_writes_run(trained) -> None:
    data, run = trained
    config = json.loads((run / "config.json").read_text())
    assert (config["image_size"], config["patch_size"], config["steps"], config["hidden"], config["channels"],
            config["lr"]) == (16, 8, 3, 16, 8, 2e-3)  # the rest from the demo preset
    log = (run / "log.csv").read_text().splitlines()
    assert len(log) == 2 and log[1].startswith("1,")  # header + exactly one epoch (--epochs 1)
    split = json.loads((run / "split.json").read_text())
    assert sorted(split["train"] + split["val"] + split["test"]) == [f"synth_{i:03d}" for i in range(6)]
    assert (run / "checkpoints" / "best.safetensors").is_file()
    assert json.loads((run / "run.json").read_text())["data"] == str(data.resolve())


def test_info(trained, capsys) -> None:
    _, run = trained
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"checkpoint {run / 'checkpoints' / 'best.safetensors'}")
    assert "format 1" in out and "epoch 1" in out
    config = json.loads(out[out.index("{"):])
    assert config["channels"] == 8 and config["image_size"] == 16


def test_predict_file_and_folder_then_evaluate(trained, tmp_path: Path, capsys) -> None:
    data, run = trained
    image = data / "imagesTr" / "synth_000.nii.gz"
    assert main(["predict", str(run), str(image), "-o", str(tmp_path / "one.nii.gz")]) == 0
    assert "wrote 1 file(s)" in capsys.readouterr().out
    got, ref = nib.load(str(tmp_path / "one.nii.gz")), nib.load(str(image))
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got.affine, ref.affine)

    preds = tmp_path / "preds"
    ckpt = run / "checkpoints" / "best.safetensors"
    assert main(["predict", str(ckpt), str(data), "-o", str(preds), "--ensemble", "2"]) == 0
    assert "wrote 18 file(s)" in capsys.readouterr().out
    names = [f"synth_{i:03d}.nii.gz" for i in range(6)]
    assert sorted(p.name for p in preds.glob("*.nii.gz")) == names
    assert sorted(p.name for p in (preds / "prob").iterdir()) == names
    assert sorted(p.name for p in (preds / "std").iterdir()) == names

    # the prob/ and std/ sub-folders are not cases: evaluate the masks against the task's labels
    out = tmp_path / "res.json"
    assert main(["evaluate", "--pred", str(preds), "--gt", str(data), "-o", str(out)]) == 0
    assert "6 cases: Dice" in capsys.readouterr().out
    results = json.loads(out.read_text())
    assert [r["case"] for r in results["cases"]] == [n[:-7] for n in names]
    assert (tmp_path / "res.csv").is_file()

    rc = main(["evaluate", "--pred", str(preds), "--gt", str(data), "-o", str(out)])
    assert_error(capsys, rc, "already exists", "--overwrite")
    assert main(["evaluate", "--pred", str(preds), "--gt", str(data), "-o", str(out), "--overwrite"]) == 0


def test_evaluate_run(trained, capsys) -> None:
    _, run = trained
    assert main(["evaluate", str(run), "--overwrite"]) == 0
    out = capsys.readouterr().out
    split = json.loads((run / "split.json").read_text())
    assert f"{len(split['test'])} cases: Dice" in out
    results = json.loads((run / "eval_test.json").read_text())
    assert [r["case"] for r in results["cases"]] == split["test"]
    assert sorted(p.name for p in (run / "predictions_test").iterdir()) == [f"{c}.nii.gz" for c in split["test"]]


def test_evaluate_run_writes_results_where_asked(trained, tmp_path: Path, capsys) -> None:
    _, run = trained
    (run / "eval_test.json").write_text("{}")  # an earlier result stays as it was
    out = tmp_path / "elsewhere" / "eval.json"
    assert main(["evaluate", str(run), "-o", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert json.loads(out.read_text())["split"] == "test" and out.with_suffix(".csv").is_file()
    assert (run / "eval_test.json").read_text() == "{}"


def test_predict_refuses_existing_output(trained, tmp_path: Path, capsys) -> None:
    data, run = trained
    out = tmp_path / "m.nii.gz"
    out.write_bytes(b"old")
    rc = main(["predict", str(run), str(data / "imagesTr" / "synth_001.nii.gz"), "-o", str(out)])
    assert_error(capsys, rc, str(out), "already exists")
    assert out.read_bytes() == b"old"
    assert main(["predict", str(run), str(data / "imagesTr" / "synth_001.nii.gz"), "-o", str(out),
                 "--overwrite"]) == 0
    assert nib.load(str(out)).shape == (20, 20, 6)


def test_train_refuses_existing_run(trained, capsys) -> None:
    data, run = trained
    rc = main(["train", "--data", str(data), "--out", str(run), *TINY])
    assert_error(capsys, rc, "already exists", "--overwrite")


def test_train_missing_data(tmp_path: Path, capsys) -> None:
    rc = main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"), *TINY])
    assert_error(capsys, rc, "does not exist")
    assert not (tmp_path / "run").exists()


def test_unknown_preset(tmp_path: Path, capsys) -> None:
    rc = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--preset", "nope"])
    assert_error(capsys, rc, "unknown preset 'nope'", "hippocampus")
    assert_error(capsys, main(["presets", "nope"]), "unknown preset")


@pytest.mark.parametrize("item, fragment", [("stepz=3", "unknown config field(s): stepz"),
                                            ("steps", "not of the form key=value"),
                                            ("steps=0", "steps must be an integer from 1 to 1024")])
def test_bad_set(tmp_path: Path, capsys, item: str, fragment: str) -> None:
    rc = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--preset", "demo", "--set", item])
    assert_error(capsys, rc, fragment)


def test_missing_checkpoint(trained, tmp_path: Path, capsys) -> None:
    data, _ = trained
    image = str(data / "imagesTr" / "synth_000.nii.gz")
    rc = main(["predict", str(tmp_path / "none.safetensors"), image, "-o", str(tmp_path / "o.nii.gz")])
    assert_error(capsys, rc, "does not exist")
    rc = main(["predict", str(tmp_path), image, "-o", str(tmp_path / "o.nii.gz")])
    assert_error(capsys, rc, "without checkpoints/best.safetensors")
    assert_error(capsys, main(["info", str(tmp_path / "none.safetensors")]), "does not exist")


def test_missing_input(trained, tmp_path: Path, capsys) -> None:
    _, run = trained
    rc = main(["predict", str(run), str(tmp_path / "nope.nii.gz"), "-o", str(tmp_path / "o.nii.gz")])
    assert_error(capsys, rc, "does not exist")


def test_incompatible_checkpoint_format(trained, tmp_path: Path, capsys) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    data, run = trained
    ckpt = run / "checkpoints" / "best.safetensors"
    with safe_open(str(ckpt), framework="pt") as f:
        meta = f.metadata()
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(ckpt)), str(old), metadata={**meta, "format": "0", "mednca_version": "0.0.1"})
    rc = main(["predict", str(old), str(data / "imagesTr" / "synth_000.nii.gz"), "-o", str(tmp_path / "o.nii.gz")])
    assert_error(capsys, rc, "checkpoint format 0", "mednca 0.0.1")
    assert_error(capsys, main(["info", str(old)]), "checkpoint format 0")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    assert_error(capsys, main(["info", str(garbage)]), "not a readable mednca checkpoint")


def test_evaluate_needs_run_or_folders(tmp_path: Path, capsys) -> None:
    assert_error(capsys, main(["evaluate"]), "evaluate needs a RUN folder")
    assert_error(capsys, main(["evaluate", "--pred", str(tmp_path)]), "evaluate needs a RUN folder")
    assert_error(capsys, main(["evaluate", str(tmp_path), "--pred", str(tmp_path)]), "not both")
    assert_error(capsys, main(["evaluate", str(tmp_path)]), "not a run folder")


def test_download_local_archive(tmp_path: Path, capsys) -> None:
    nib.save(nib.Nifti1Image(np.ones((4, 4, 2), np.uint8), np.eye(4)), str(tmp_path / "a.nii.gz"))
    nifti = (tmp_path / "a.nii.gz").read_bytes()
    tar_path = tmp_path / "Task99_Fake.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name, payload in {"Task99_Fake/imagesTr/a.nii.gz": nifti, "Task99_Fake/labelsTr/a.nii.gz": nifti,
                              "Task99_Fake/dataset.json": b'{"name": "fake"}'}.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    md5 = hashlib.md5(tar_path.read_bytes()).hexdigest()
    dest = tmp_path / "dest"
    rc = main(["download", "Task99_Fake", "--url", str(tar_path), "--md5", md5, "--dest", str(dest)])
    assert rc == 0
    assert f"Task99_Fake is ready in {dest / 'Task99_Fake'}" in capsys.readouterr().out
    assert (dest / "Task99_Fake" / "imagesTr" / "a.nii.gz").read_bytes() == nifti
    assert (dest / "Task99_Fake" / "dataset.json").read_text() == '{"name": "fake"}'
    rc = main(["download", "Task99_Fake", "--url", str(tar_path), "--md5", md5, "--dest", str(dest)])
    assert_error(capsys, rc, "already exists")
    rc = main(["download", "Task99_Fake", "--url", str(tar_path), "--md5", "0" * 32, "--dest",
               str(tmp_path / "d2")])
    assert_error(capsys, rc, "checksum mismatch")


@pytest.mark.parametrize("k", ["0", "-2"])
def test_predict_bad_ensemble_is_a_one_line_error(trained, tmp_path: Path, capsys, k: str) -> None:
    data, run = trained
    try:
        rc = main(["predict", str(run), str(data / "imagesTr" / "synth_000.nii.gz"), "-o",
                   str(tmp_path / "o.nii.gz"), "--ensemble", k])
    except SystemExit as exc:  # argparse rejecting the value (usage + exit 2) is a fine fix too
        assert exc.code == 2 and "--ensemble" in capsys.readouterr().err
        return
    assert_error(capsys, rc, "ensemble")


def test_failed_train_leaves_no_half_made_run(tmp_path: Path, capsys) -> None:
    data = make_synthetic_dataset(tmp_path / "data", n_cases=3, shape=(8, 8, 2))
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), *TINY]
    assert_error(capsys, main([*args, "--set", "lr=-1"]), "lr must be a finite number in (0, inf), got -1")
    assert_error(capsys, main([*args, "--set", "axis=1", "--label", "7"]), "no foreground")
    run = tmp_path / "run"
    assert not run.exists() or not any(run.iterdir())


def test_network_commands_flush_denormals_and_light_ones_do_not(monkeypatch, tmp_path):
    import torch

    import mednca.cli as cli
    import mednca.runtime

    calls = []
    monkeypatch.setattr(mednca.runtime, "flush_denormals", lambda: calls.append("flush"))
    monkeypatch.setattr(mednca.runtime, "retain_freed_memory", lambda: calls.append("retain"))
    assert cli.main(["presets"]) == 0
    assert calls == []
    # a network command flushes before it runs (here it then fails on a missing checkpoint)
    assert cli.main(["predict", str(tmp_path / "missing.safetensors"), str(tmp_path), "-o", str(tmp_path / "o")]) == 1
    assert calls == ["flush", "retain"]
    monkeypatch.undo()
    mednca.runtime.flush_denormals()
    assert torch.tensor([1e-39]).mul(1.0).item() == 0.0  # a denormal now reads as zero


# -- the hostile-input audit: every case one line, exit 1 -------------------------------------------
def _checkpoint_with(path: Path, config_text: str, tensors_from: Path) -> Path:
    """A copy of a checkpoint whose header's config is replaced by ``config_text``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(tensors_from), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata={**meta, "config": config_text})
    return path


@pytest.mark.parametrize("config_text, fragment", [
    ("null", "expected a JSON object, got NoneType"),
    ("[1, 2]", "expected a JSON object, got list"),
    ("{not json", "the model's config is invalid"),
    ('{"steps": 1000000000}', "steps must be an integer from 1 to 1024"),
    ('{"channels": 30000}', "channels must be an integer from 2 to 256"),
])
def test_hostile_checkpoint_configs_are_refused_before_building(trained, tmp_path: Path, capsys, config_text, fragment):
    _, run = trained
    bad = _checkpoint_with(tmp_path / "bad.safetensors", config_text, run / "checkpoints" / "best.safetensors")
    scan = sorted((trained[0] / "imagesTr").glob("*.nii.gz"))[0]
    assert_error(capsys, main(["predict", str(bad), str(scan), "-o", str(tmp_path / "m.nii.gz")]), fragment)
    assert_error(capsys, main(["info", str(bad)]), fragment)  # info no longer lists an invalid config
    assert not (tmp_path / "m.nii.gz").exists()


def test_weights_that_do_not_fit_are_one_line(trained, tmp_path: Path, capsys):
    _, run = trained
    config = json.loads((run / "config.json").read_text())
    config["hidden"] = 24  # the weights have hidden 16
    bad = _checkpoint_with(tmp_path / "bad.safetensors", json.dumps(config), run / "checkpoints" / "best.safetensors")
    assert main(["info", str(bad)]) == 0  # the header alone is valid ...
    capsys.readouterr()
    scan = sorted((trained[0] / "imagesTr").glob("*.nii.gz"))[0]
    assert_error(capsys, main(["predict", str(bad), str(scan), "-o", str(tmp_path / "m.nii.gz")]),
                 "weights do not fit the config")  # ... the 17-line state-dict mismatch is one line


def test_audit_arguments_are_one_line_errors(trained, tmp_path: Path, capsys):
    data, run = trained
    base = ["train", "--data", str(data), *TINY]
    assert_error(capsys, main([*base, "--out", str(tmp_path / "a"), "--set", "name=123"]), "name must be a string")
    assert_error(capsys, main([*base, "--out", str(tmp_path / "b"), "--set", "channel=1.5"]), "channel must be an integer")
    assert_error(capsys, main([*base, "--out", str(tmp_path / "c"), "--set", "channel=abc"]), "channel must be")
    assert_error(capsys, main([*base, "--out", str(tmp_path / "d"), "--set", "grad_checkpoint=2"]), "grad_checkpoint")
    (tmp_path / "file").write_text("not a folder")
    assert_error(capsys, main([*base, "--out", str(tmp_path / "file"), "--overwrite"]), "is a file")
    assert (tmp_path / "file").read_text() == "not a folder"
    with pytest.raises(SystemExit) as exc:  # argparse: usage error, exit 2, one line of reason
        main([*base, "--out", str(tmp_path / "e"), "--seed", str(2 ** 70)])
    assert exc.value.code == 2 and "must be an integer from 0 to 4294967295" in capsys.readouterr().err


def test_a_corrupt_training_state_on_resume_is_one_line(trained, tmp_path: Path, capsys):
    import shutil

    data, run = trained
    copy = shutil.copytree(run, tmp_path / "run")
    state = copy / "checkpoints" / "last.state.safetensors"
    state.write_bytes(state.read_bytes()[:100])  # truncated
    assert_error(capsys, main(["train", "--data", str(data), "--out", str(copy), "--resume", "--no-progress"]),
                 "last.state.safetensors")


def test_resume_with_other_data_is_refused(trained, tmp_path: Path, capsys):
    import shutil

    _, run = trained
    copy = shutil.copytree(run, tmp_path / "run")
    other = make_synthetic_dataset(tmp_path / "other", n_cases=3, shape=(20, 20, 6), seed=1)
    for p in (other / "imagesTr").glob("*"):  # other case ids than the run's
        p.rename(p.with_name("x" + p.name))
    for p in (other / "labelsTr").glob("*"):
        p.rename(p.with_name("x" + p.name))
    before = (copy / "checkpoints" / "best.safetensors").read_bytes()
    assert_error(capsys, main(["train", "--data", str(other), "--out", str(copy), "--resume", "--epochs", "2",
                               "--no-progress"]), "of the run are not in")
    assert (copy / "checkpoints" / "best.safetensors").read_bytes() == before


def test_an_unwritable_output_fails_before_predicting(trained, tmp_path: Path, capsys):
    data, run = trained
    scan = sorted((data / "imagesTr").glob("*.nii.gz"))[0]
    (tmp_path / "file").write_text("x")
    assert_error(capsys, main(["predict", str(run), str(scan), "-o", str(tmp_path / "file" / "m.nii.gz")]),
                 "is a file, not a folder")


def test_a_full_disk_while_downloading_is_one_line(tmp_path: Path):
    import resource
    import sys

    payload = np.random.default_rng(0).bytes(64 << 10)  # incompressible: the archive holds 64 KiB
    archive = tmp_path / "Task99_Test.tar"
    with tarfile.open(archive, "w") as tar:
        for name in ("Task99_Test/dataset.json", "Task99_Test/imagesTr/a.nii.gz"):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (32 << 10, 32 << 10))

    proc = subprocess.run([sys.executable, "-m", "mednca", "download", "Task99_Test", "--url", str(archive),
                           "--md5", md5, "--dest", str(tmp_path / "dest")], capture_output=True, text=True,
                          preexec_fn=small_files)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("mednca: error: ") and "File too large" in err and "\n" not in err
