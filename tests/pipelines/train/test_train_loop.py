"""The Lightning loop end to end: a tiny run on the corpus, its checkpoint, evaluation and prediction; exact
resume after a kill; DDP over two processes (torchrun, gloo); Ray Train on a local Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from pipelines import cli
from pipelines.train.config import config_from_dict

REPO = Path(__file__).resolve().parents[3]


def _losses(out: Path) -> pd.Series:
    """``train/loss`` by step over every run folder of ``out`` (a resumed run logs to a new one)."""
    frames = [pd.read_csv(p) for p in sorted((out / "logs" / "csv").glob("run*/metrics.csv"))]
    df = pd.concat(frames)[["step", "train/loss"]].dropna()
    return df.drop_duplicates("step", keep="last").set_index("step")["train/loss"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus, kit_dir, make_config) -> Path:
    """A 6-step run (checkpoints at steps 3 and 6, evaluation every 3 steps)."""
    from pipelines.train.run import fit

    out = tmp_path_factory.mktemp("train") / "run"
    fit(config_from_dict(make_config(out, corpus, kit_dir)))
    return out


def test_a_run_writes_config_mean_parameters_checkpoints_and_logs(trained, corpus):
    assert (trained / "config.yaml").is_file() and (trained / "mean_params.npz").is_file()
    assert {p.name for p in (trained / "checkpoints").iterdir()} >= {"last.ckpt", "step=3.ckpt", "step=6.ckpt"}
    assert list((trained / "logs" / "tensorboard" / "run0").glob("events.out.tfevents.*"))
    metrics = pd.read_csv(trained / "logs" / "csv" / "run0" / "metrics.csv")
    assert metrics["train/loss"].notna().sum() == 6 and metrics["val/mpjpe_mm"].notna().sum() == 2
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 6 and ckpt["pearl"]["data_position"] == {"epoch": 1, "batches": 2}
    assert ckpt["pearl"]["model"]["backbone"]["img_size"] == [128, 96]
    saved = yaml.safe_load((trained / "config.yaml").read_text())
    assert saved["data"]["batch_size"] == 4 and saved["model"]["resolved"]["num_betas"] == 10
    with __import__("numpy").load(trained / "mean_params.npz") as npz:  # the corpus's means are the start
        assert torch.allclose(ckpt["state_dict"]["regressor.init_params"][-3:],
                              torch.as_tensor(npz["cam"]), atol=0.5)
        assert int(npz["count.body_pose"]) == 24


def test_evaluate_on_shards_and_its_command(trained, corpus, capsys):
    ckpt = trained / "checkpoints" / "last.ckpt"
    assert cli.main(["evaluate", "--checkpoint", str(ckpt), "--shards", str(corpus / "wds" / "val-000000.tar"),
                     "--mean-pose", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 8
    for key in ("mpjpe_mm", "pa_mpjpe_mm", "pve_mm", "hand_pa_pve_mm", "pck_0.05", "pck_0.1", "face_landmark_mm",
                "lip_vertex_mm", "mpjpe_mm_mean_pose", "pck_0.1_body"):
        assert result[key] is not None and result[key] >= 0, key
    assert result["pa_mpjpe_mm"] < result["mpjpe_mm"]
    assert cli.main(["evaluate", "--checkpoint", str(trained / "config.yaml"), "--shards", "x.tar"]) == 2


def test_coco_wholebody_pck_against_labels(trained, tmp_path, examples_dir):
    from PIL import Image

    from pipelines.train.evaluate import evaluate_coco_wholebody

    image = sorted(examples_dir.glob("*.jpg"))[0]
    w, h = Image.open(image).size
    kp = [0.0] * 133 * 3
    for i, (x, y) in enumerate([(0.5 * w, 0.2 * h), (0.45 * w, 0.6 * h)]):
        kp[3 * i: 3 * i + 3] = [x, y, 2]
    parts = {"keypoints": kp[:51], "foot_kpts": kp[51:69], "face_kpts": kp[69:273], "lefthand_kpts": kp[273:336],
             "righthand_kpts": kp[336:]}
    person = {"iscrowd": 0, "bbox": [0.1 * w, 0.05 * h, 0.8 * w, 0.9 * h], **parts}
    labels = {"images": [{"id": 1, "file_name": image.name, "width": w, "height": h},
                         {"id": 2, "file_name": f"../{image.parent.name}/{image.name}", "width": w, "height": h}],
              "annotations": [{"id": 1, "image_id": 1, **person}, {"id": 2, "image_id": 2, **person},
                              {"id": 3, "image_id": 1, **person, "bbox": [0, 0, 0, 10]}]}  # outside the root; no area
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    result = evaluate_coco_wholebody(trained / "checkpoints" / "last.ckpt", tmp_path / "labels.json",
                                     image_root=image.parent, device="cpu")
    assert result["coco_wholebody_persons"] == 1  # the image outside the root and the empty box are left out
    assert 0.0 <= result["coco_wholebody_pck_0.1"] <= 1.0 and result["coco_wholebody_pck_0.1_face"] is None


def test_predict_writes_records_and_overlays(trained, tmp_path, examples_dir):
    import schemas
    from pipelines.io.shards import iter_wds

    image = sorted(examples_dir.glob("*.jpg"))[0]
    out = tmp_path / "pred"
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({image.name: [[10.0, 10.0, 200.0, 300.0]]}))
    assert cli.main(["predict", str(image), "--checkpoint", str(trained / "checkpoints" / "last.ckpt"), "--out",
                     str(out), "--boxes", str(boxes), "--device", "cpu"]) == 0
    records = [schemas.members_to_record(s) for s in iter_wds(str(out / "wds" / "predict-000000.tar"))]
    assert len(records) == 1 and records[0]["has_body"] and records[0]["bbox_source"] == "label"
    backends = json.loads(records[0]["backends"])
    assert backends["body"].startswith("body/pear@") and len(backends["body"].split("@")[1]) == 12
    assert records[0]["smplx_transl"][2] > 0 and (records[0]["crop_xyxy"][2:] > records[0]["crop_xyxy"][:2]).all()
    assert len(list((out / "overlays").glob("*.jpg"))) == 1
    assert cli.main(["predict", str(image), "--checkpoint", str(trained / "checkpoints" / "last.ckpt"), "--out",
                     str(out)]) == 2  # the folder holds a run already


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_predict_on_a_folder_passes_over_files_it_cannot_read(trained, tmp_path, examples_dir):
    """A folder with a FIFO (which would block a plain read) and a broken image beside a good one: the good one
    is predicted, the others are reported with their reason, nothing hangs."""
    import shutil

    from pipelines.train.predict import predict_images

    folder = tmp_path / "in"
    folder.mkdir()
    image = sorted(examples_dir.glob("*.jpg"))[0]
    shutil.copy(image, folder / image.name)
    os.mkfifo(folder / "pipe.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    result = predict_images([str(folder)], trained / "checkpoints" / "last.ckpt", tmp_path / "pred", device="cpu",
                            boxes={image.name: [[10.0, 10.0, 200.0, 300.0]]})
    assert result.persons == 1 and result.images == 1
    assert {Path(k).name for k in result.failed} == {"pipe.jpg", "broken.jpg"}
    assert "regular file" in next(v for k, v in result.failed.items() if k.endswith("pipe.jpg"))


def _train_cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "train", "--config", str(config), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_a_killed_run_resumes_exactly(tmp_path, corpus, kit_dir, make_config):
    """Kill a run (SIGKILL) after its step-6 checkpoint, resume it: the losses from step 6 on equal those of an
    uninterrupted run with the same seed (data order, augmentation, optimiser and schedule restored)."""
    sections = {"trainer": {"max_steps": 12, "checkpoint_every_n_steps": 3, "val_every_n_steps": 100,
                            "log_every_n_steps": 1, "progress_bar": False, "torch_threads": 1},
                "data": {**make_config(tmp_path, corpus, kit_dir)["data"], "num_workers": 1}}
    configs = {}
    for name in ("whole", "killed"):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(make_config(tmp_path / name, corpus, kit_dir, **sections)))
    subprocess.run(_train_cmd(configs["whole"]), env=_env(), check=True, capture_output=True, timeout=600)
    proc = subprocess.Popen(_train_cmd(configs["killed"]), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    target = tmp_path / "killed" / "checkpoints" / "step=6.ckpt"
    deadline = time.time() + 600
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the checkpoint written, the run goes on
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.exists() and not (tmp_path / "killed" / "checkpoints" / "step=12.ckpt").exists()
    subprocess.run(_train_cmd(configs["killed"], "--resume", str(target)), env=_env(), check=True,
                   capture_output=True, timeout=600)
    whole, resumed = _losses(tmp_path / "whole"), _losses(tmp_path / "killed")
    assert list(whole.index) == list(range(12)) and set(range(6, 12)) <= set(resumed.index)
    assert whole.nunique() == 12  # the losses do change from step to step
    pd.testing.assert_series_equal(resumed.loc[6:], whole.loc[6:], rtol=1e-6)


@pytest.mark.slow
def test_torchrun_ddp_over_two_cpu_processes(tmp_path, corpus, kit_dir, make_config):
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(make_config(tmp_path / "ddp", corpus, kit_dir,
                                                 trainer={"max_steps": 4, "val_every_n_steps": 2,
                                                          "checkpoint_every_n_steps": 2})))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "pipelines.cli", "train", "--config", str(config)]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MEMBER: 2/2" in done.stdout + done.stderr  # Lightning's message of the second rank
    ckpt = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    metrics = pd.read_csv(tmp_path / "ddp" / "logs" / "csv" / "run0" / "metrics.csv")
    assert metrics["val/mpjpe_mm"].notna().sum() == 2


@pytest.mark.slow
def test_ray_train_runs_the_same_loop_on_two_workers(tmp_path, corpus, kit_dir, make_config):
    config = tmp_path / "ray.yaml"
    config.write_text(yaml.safe_dump(make_config(tmp_path / "ray", corpus, kit_dir,
                                                 trainer={"max_steps": 4, "val_every_n_steps": 4,
                                                          "checkpoint_every_n_steps": 2})))
    done = subprocess.run(_train_cmd(config, "--ray-address", "local", "--ray-workers", "2"), env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    ckpt = torch.load(tmp_path / "ray" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    metrics = pd.read_csv(tmp_path / "ray" / "logs" / "csv" / "run0" / "metrics.csv")
    assert metrics["train/loss"].notna().sum() == 4 and metrics["val/mpjpe_mm"].notna().sum() == 1


@pytest.mark.gpu
def test_bf16_training_on_cuda(tmp_path, corpus, kit_dir, make_config):
    from pipelines.train.run import build_trainer, fit

    config = config_from_dict(make_config(tmp_path / "gpu", corpus, kit_dir, trainer={"max_steps": 3,
                              "accelerator": "gpu", "val_every_n_steps": 3, "checkpoint_every_n_steps": 3}))
    assert build_trainer(config).precision == "bf16-mixed"
    fit(config)
    ckpt = torch.load(tmp_path / "gpu" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3 and all(v.dtype != torch.bfloat16 for v in ckpt["state_dict"].values())


@pytest.mark.slow
def test_trains_on_the_shards_annotate_writes_from_the_examples(annotated_examples, tmp_path):
    """The real path: the default plan's shards of the shipped photos (their run folder as the URL) feed a few
    steps of the tiny regressor; the body, hand, face and 2D terms are all supervised by them."""
    run, report = annotated_examples
    assert report["totals"]["persons"] >= 2
    out = tmp_path / "real"
    assert cli.main(["train", "--train-shards", str(run), "--out", str(out), "--preset", "pear-tiny",
                     "--max-steps", "4", "--batch-size", "2", "--num-workers", "0", "--lr", "1e-3",
                     "--set", "data.stats_samples=8", "--set", "data.epoch_size=4", "--set", "data.shuffle_buffer=4",
                     "--set", "trainer.val_every_n_steps=100", "--set", "trainer.log_every_n_steps=1",
                     "--set", "trainer.progress_bar=false", "--set", "trainer.torch_threads=1"]) == 0
    assert (out / "checkpoints" / "last.ckpt").is_file()
    metrics = pd.read_csv(out / "logs" / "csv" / "run0" / "metrics.csv")
    terms = metrics[[c for c in metrics.columns if c.startswith("train/")]].dropna(how="all")
    assert len(terms) == 4 and terms["train/loss"].notna().all() and (terms["train/loss"] > 0).all()
    for term in ("smplx_pose", "kp3d_body", "kp2d_body", "flame_expression", "kp2d_face"):
        assert (terms[f"train/{term}"] > 0).any(), term  # the annotated persons supervise it
    assert metrics["data/invalid"].dropna().iloc[-1] == 0
