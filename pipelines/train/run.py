"""The ``pearl train`` driver: one process, ``torchrun`` processes (DDP) or Ray Train workers, all running
:func:`fit` with the same Lightning loop.

:func:`fit` (in every process): resolve the body models, compute the shape mirror maps and the mean
parameters (or read ``mean_params``, or a resumed checkpoint's), write ``OUT/config.yaml`` and
``OUT/mean_params.npz`` (rank 0), build the :class:`pipelines.train.module.PearModule` and a Lightning
``Trainer`` (CSV and TensorBoard loggers under ``OUT/logs/{csv,tensorboard}/run<N>``, checkpoints under
``OUT/checkpoints``, a progress bar, bf16 autocast on CUDA) and fit.

- **One process**: ``pearl train --config FILE``.
- **torchrun**: ``torchrun --nnodes N --nproc-per-node P -m pipelines.cli train --config FILE``; Lightning
  reads torchrun's environment (the devices per node and the node count follow it) and runs DDP (NCCL on
  GPUs, gloo on CPUs).
- **Ray Train** (:func:`fit_on_ray`): ``pearl train --config FILE --ray-address ADDR`` starts
  ``ray.num_workers`` workers on the cluster through ``ray.train.torch.TorchTrainer``; each runs :func:`fit`
  with Ray's DDP strategy and environment. Checkpoints and logs go to ``OUT``, which must therefore be a
  folder every worker reaches (one machine, or a shared filesystem).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from pipelines.train.config import TrainConfig, TrainConfigError, config_from_dict, save_config, to_dict

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
MEAN_PARAMS_FILE = "mean_params.npz"
CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"


def _under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and "LOCAL_WORLD_SIZE" in os.environ


def _rank() -> int:
    """This process's global rank: the process group's (Ray Train sets it up before the loop), else torchrun's
    ``RANK``, else 0."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def resume_checkpoint(config: TrainConfig) -> str | None:
    """The checkpoint to resume from: ``config.resume``, with ``auto`` meaning ``OUT/checkpoints/last.ckpt``
    when it exists (else a fresh start)."""
    if config.resume is None:
        return None
    if config.resume == "auto":
        last = Path(config.out) / CHECKPOINTS / LAST
        return str(last) if last.is_file() else None
    if not Path(config.resume).is_file():
        raise TrainConfigError(f"resume: {config.resume} is not a checkpoint file (give a .ckpt or 'auto')")
    return config.resume


def _next_run(logs: Path) -> str:
    """``run<N>``: the first name not yet used under ``logs`` (each start or resume logs to its own folder)."""
    n = 0
    while (logs / f"run{n}").exists():
        n += 1
    return f"run{n}"


def prepare(config: TrainConfig) -> tuple[str, Any, Any]:
    """Body-model folder, shape mirror maps and mean parameter blocks of a run (writing ``OUT/config.yaml``
    and ``OUT/mean_params.npz`` on rank 0)."""
    from model.ehm import EHM
    from model.flip import ShapeMirror
    from pipelines.io.body_models import resolve_body_models
    from pipelines.train.augment import SamplePreparer
    from pipelines.train.data import resolve_urls
    from pipelines.train.stats import load_mean_params, mean_params, save_mean_params

    if not config.out:
        raise TrainConfigError("no output folder: pass --out OUT or set out: in the config")
    if not config.data.train:
        raise TrainConfigError("no training shards: pass --train-shards URLS or set data.train in the config")
    folder = resolve_body_models(config.body_models).folder
    out = Path(config.out)
    rank0 = _rank() == 0
    if rank0:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / CONFIG_FILE)
    mirror = ShapeMirror.from_ehm(EHM.from_dir(folder))
    model_config = config.model.resolved()
    if config.mean_params:
        blocks = load_mean_params(config.mean_params, model_config)
        counts: dict[str, int] = {}
    elif resume_checkpoint(config) is not None:
        return folder, mirror, None  # the checkpoint holds them (regressor.init_params)
    else:
        sets = [(resolve_urls(s.urls), s.weight) for s in config.data.train]
        preparer = SamplePreparer(config.data, model_config, mirror)
        blocks, counts = mean_params(sets, preparer, model_config, config.data.stats_samples)
        log.info("mean parameters from %d samples", max(counts.values(), default=0))
    if rank0:
        save_mean_params(blocks, counts, out / MEAN_PARAMS_FILE)
    return folder, mirror, blocks


def build_trainer(config: TrainConfig, *, ray: bool = False, callbacks: list[Any] | None = None) -> Any:
    """The Lightning ``Trainer`` of a run (module docstring), with extra Lightning ``callbacks``."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    t = config.trainer
    out = Path(config.out)
    accelerator = t.accelerator
    cuda = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    precision = t.precision if t.precision != "auto" else ("bf16-mixed" if cuda else "32-true")
    if precision in ("bf16-mixed", "16-mixed") and not cuda:
        raise TrainConfigError(f"trainer.precision {precision}: mixed precision runs on CUDA only; use 32 or auto")
    version = _next_run(out / "logs" / "csv") if _rank() == 0 else "run-rank"
    loggers = [CSVLogger(out / "logs", name="csv", version=version, flush_logs_every_n_steps=t.log_every_n_steps),
               TensorBoardLogger(out / "logs", name="tensorboard", version=version, default_hp_metric=False)]
    checkpoints = ModelCheckpoint(dirpath=out / CHECKPOINTS, filename="step={step}", auto_insert_metric_name=False,
                                  every_n_train_steps=t.checkpoint_every_n_steps, save_last=True,
                                  save_top_k=t.keep_checkpoints, monitor="step", mode="max")
    callbacks = [checkpoints, *(callbacks or [])]
    if t.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, t.log_every_n_steps)))
    kwargs: dict[str, Any] = dict(
        max_steps=t.max_steps, max_epochs=-1, precision=precision, logger=loggers, callbacks=callbacks,
        log_every_n_steps=t.log_every_n_steps, val_check_interval=t.val_every_n_steps, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, gradient_clip_val=config.optim.grad_clip or None,
        limit_val_batches=None if config.data.val else 0,
        enable_progress_bar=t.progress_bar, deterministic=t.deterministic, use_distributed_sampler=False,
        default_root_dir=str(out),
        max_time={"seconds": t.max_time_s} if t.max_time_s else None,
    )
    if ray:
        from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment

        kwargs.update(accelerator="gpu" if config.ray.use_gpu else "cpu", devices="auto",
                      strategy=RayDDPStrategy(process_group_backend=None if config.ray.use_gpu else "gloo"),
                      plugins=[RayLightningEnvironment()])
        return L.Trainer(**kwargs)
    devices, nodes = t.devices, t.num_nodes
    if _under_torchrun():
        devices = int(os.environ["LOCAL_WORLD_SIZE"])
        nodes = max(1, int(os.environ["WORLD_SIZE"]) // devices)
    kwargs.update(accelerator="gpu" if cuda else "cpu", devices=devices, num_nodes=nodes)
    world = (devices if isinstance(devices, int) else (torch.cuda.device_count() if cuda else 1)) * nodes
    if world > 1 or _under_torchrun():
        from lightning.pytorch.strategies import DDPStrategy

        kwargs["strategy"] = DDPStrategy(process_group_backend="nccl" if cuda else "gloo")
    return L.Trainer(**kwargs)


def fit(config: TrainConfig, *, ray: bool = False, callbacks: list[Any] | None = None) -> Path:
    """Train (module docstring) with extra Lightning ``callbacks``; returns ``OUT/checkpoints/last.ckpt``."""
    import lightning as L
    import torch

    from pipelines.train.module import PearModule

    if config.trainer.torch_threads:
        torch.set_num_threads(config.trainer.torch_threads)
    L.seed_everything(config.seed, workers=True, verbose=False)
    folder, mirror, blocks = prepare(config)
    module = PearModule(config, folder, mirror, blocks)
    trainer = build_trainer(config, ray=ray, callbacks=callbacks)
    if ray:
        from ray.train.lightning import prepare_trainer

        trainer = prepare_trainer(trainer)
    ckpt = resume_checkpoint(config)
    if ckpt:
        log.info("resuming from %s", ckpt)
    with warnings.catch_warnings():
        # the data position is restored by the module (PearModule.on_load_checkpoint -> EpochLoader), not
        # through Lightning's stateful-loader protocol; the stream sizes every worker itself
        warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
        warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__` defined.*")
        trainer.fit(module, ckpt_path=ckpt, weights_only=True)
    last = Path(config.out) / CHECKPOINTS / LAST
    if trainer.global_step % config.trainer.checkpoint_every_n_steps:  # the final state, not only the last multiple
        trainer.save_checkpoint(last)
    return last


def _ray_loop(data: dict[str, Any]) -> None:
    fit(config_from_dict(data, "ray train config"), ray=True)


def fit_on_ray(config: TrainConfig) -> Path:
    """Run :func:`fit` on ``config.ray.num_workers`` Ray Train workers (module docstring)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    r = config.ray
    out = Path(config.out).resolve()
    if not ray.is_initialized():
        env = {"env_vars": {k: v for k, v in os.environ.items() if k.startswith("PEARL_")}}
        if r.address == "local":  # a private Ray, never one that happens to run here, stopped if we are killed
            from pipelines.annotation.ray_reaper import start_reaper

            start_reaper()
        ray.init(address=r.address, runtime_env=env)
    data = to_dict(config)
    data["out"] = str(out)
    data["ray"]["address"] = None
    trainer = TorchTrainer(
        _ray_loop, train_loop_config=data,
        scaling_config=ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu,
                                     resources_per_worker={"CPU": r.cpus_per_worker}),
        run_config=RunConfig(storage_path=str(out / "ray"), name="train"),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return out / CHECKPOINTS / LAST
