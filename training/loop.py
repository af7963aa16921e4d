"""One training loop for every stage: sample, loss, step, log, checkpoint, evaluate.

The files it writes follow the run-folder layout of :mod:`training.runs`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from kind_serve.model import KinD
from kind_serve.model.image import from_tensor

from . import dist
from .checkpoint import load_checkpoint, save_checkpoint
from .config import STAGES as STAGE_NAMES
from .config import TrainConfig, to_dict
from .data import ImageCache, StepBatches, iterate_batches, load_pairs, sample_batch
from .evaluate import evaluate, kind_method
from .precision import Autocast, training_precision
from .runs import (
    load_finished,
    metrics_path,
    samples_dir,
    stage_dir,
    stage_module,
    step_weights_path,
    weights_path,
)
from .stages import STAGES, Nets, loss_options

log = logging.getLogger(__name__)


def get_lr(step: int, base: float, steps: int, decay_at: float) -> float:
    return base / 2 if step >= decay_at * steps else base


class MetricsLog:
    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def _dev_check(kind: KinD, name: str, nets: Nets, cfg: TrainConfig, dev: list, cache: ImageCache) -> dict[str, Any]:
    """Stage loss on fixed dev crops (noise included); for the restoration stage, also full-pipeline metrics."""
    stage, sc = STAGES[name], cfg.stages[name]
    out: dict[str, Any] = {}
    with torch.no_grad():
        total = 0.0
        for i in range(0, min(cfg.eval_pairs, len(dev))):
            rng = np.random.default_rng([cfg.seed, 7919, i])
            crops = sample_batch(dev, cache, [i], max(sc.patch_size, 96), rng, cfg.noise)
            low, high = (t.to(kind.device, memory_format=torch.channels_last) for t in crops)
            total += float(stage.loss(nets, low, high, rng, loss_options(cfg, name), sc.steps))
        out["dev_loss"] = round(total / max(1, min(cfg.eval_pairs, len(dev))), 5)
    if name == "restore":
        picks = dev[:: max(1, len(dev) // cfg.eval_pairs)][: cfg.eval_pairs]
        res = evaluate({"auto": kind_method(kind, "auto", "paper")}, picks, cache, cfg.eval_size)["auto"]
        out |= {f"dev_{k}": v for k, v in res.items()}
    return out


def _save_samples(kind: KinD, dev: list, cache: ImageCache, directory: Path, step: int, size: int) -> None:
    from .evaluate import load_pair

    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    with torch.inference_mode():
        for pair in dev[:: max(1, len(dev) // 4)][:4]:
            low, high = load_pair(cache, pair, size)
            out, _ = kind_method(kind, "auto", "photo")(low, high)
            rows.append(torch.cat([low, out, high], dim=-1))
    from_tensor(torch.cat(rows, dim=-2)).save(directory / f"step{step:07d}.png")


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def _stage_nets(cfg: TrainConfig, name: str, run_dir: Path, device: torch.device) -> tuple[KinD, torch.nn.Module]:
    """KinD with the weights stage ``name`` starts from, on ``device``, and the one net it trains (train mode)."""
    requires = STAGES[name].requires
    base = KinD.load(cfg.init) if cfg.init else None
    kind = KinD()
    if base is not None:  # fine-tuning: every net starts from the bundle
        kind.load_state_dict(base.state_dict())
    for required in requires:
        load_finished(kind, run_dir, required, base)
    for other in STAGE_NAMES:  # finished stages this one does not need still make the dev evaluation meaningful
        if other != name and other not in requires and weights_path(run_dir, other).is_file():
            load_finished(kind, run_dir, other)
    # ~20% faster convs on CPU, also the fast GPU layout; Module.to takes memory_format, torch's overloads omit it
    kind.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    trained = stage_module(kind, name)
    for module in (kind.decom, kind.adjustment, kind.restoration):
        module.requires_grad_(module is trained)
        module.train(module is trained)
    return kind, trained


def _resume(stage_dir: Path, trained: torch.nn.Module, optimizer: torch.optim.Optimizer, resume: bool) -> int:
    """The step to start from: 0, or the checkpoint's (its net, optimizer and RNG restored) with ``resume``."""
    state = load_checkpoint(stage_dir)
    if state is None:
        return 0
    if not resume:
        raise FileExistsError(
            f"{stage_dir} already holds a checkpoint: pass --resume to continue it, or use a new --out"
        )
    trained.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def _train_step(optimizer: torch.optim.Optimizer, lr: float, loss_fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """One optimiser step at learning rate ``lr`` on the loss ``loss_fn`` computes; returns the loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = loss_fn()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def _save_state(
    cfg: TrainConfig, name: str, step: int, trained: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """The resumable state of stage ``name`` at ``step`` (training/checkpoint.py writes it atomically)."""
    state = {
        "stage": name,
        "step": step,
        "model": trained.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "config": json.dumps(to_dict(cfg)),
    }
    save_checkpoint(state, stage_dir(cfg.out, name))


def _evaluate(
    kind: KinD, name: str, trained: torch.nn.Module, cfg: TrainConfig, dev: list, cache: ImageCache, step: int
) -> dict[str, Any]:
    """Dev check, samples and a weights snapshot at ``step`` (main process); the trained net back in train mode."""
    trained.eval()
    record = {
        "step": step,
        "eval": _dev_check(kind, name, Nets(kind.decom, kind.adjustment, kind.restoration), cfg, dev, cache),
    }
    if name != "decom":
        _save_samples(kind, dev, cache, samples_dir(cfg.out, name), step, cfg.eval_size)
    trained.train()
    save_file(_cpu_state(trained), str(step_weights_path(cfg.out, name, step)))
    return record


def train_stage(cfg: TrainConfig, name: str, *, resume: bool = False) -> Path:
    """Train one stage to ``cfg.stages[name].steps``; returns the stage directory."""
    if name not in STAGE_NAMES:
        raise ValueError(f"stage must be one of {STAGE_NAMES}, got {name!r}")
    info = dist.setup(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    stage, sc, options = STAGES[name], cfg.stages[name], loss_options(cfg, name)
    run_dir, folder = Path(cfg.out), stage_dir(cfg.out, name)
    if info.is_main:
        folder.mkdir(parents=True, exist_ok=True)

    kind, trained = _stage_nets(cfg, name, run_dir, info.device)
    optimizer = torch.optim.Adam(trained.parameters(), lr=sc.lr, betas=(0.9, 0.999), eps=1e-8)
    start = _resume(folder, trained, optimizer, resume)
    if start and info.is_main:
        log.info("resuming %s at step %d", name, start)

    wrapped = DistributedDataParallel(trained) if info.world > 1 else trained
    nets = Nets(kind.decom, kind.adjustment, kind.restoration)
    setattr(nets, name, wrapped)  # the loss calls the trained net through DDP so gradients are all-reduced
    precision = training_precision(cfg.precision, info.device)
    if precision == "bf16":
        nets = Nets(*(Autocast(net) for net in (nets.decom, nets.adjust, nets.restore)))
    if info.is_main:
        log.info("training %s with the networks in %s", name, precision)

    pairs = load_pairs(cfg.data, cfg.data_format, "train", cfg.pairs, sc.pairs)
    dev = load_pairs(cfg.data, cfg.data_format, "dev", cfg.pairs)
    cache = ImageCache()
    metrics = MetricsLog(metrics_path(run_dir, name), info.is_main)
    stage_index = STAGE_NAMES.index(name)

    bar = tqdm(range(start, sc.steps), initial=start, total=sc.steps, desc=name, disable=not info.is_main)
    plan = StepBatches(pairs, sc.batch_size, sc.patch_size, cfg.noise, cfg.seed, stage_index, info.rank, info.world)
    stream = iterate_batches(plan, range(start, sc.steps), cfg.workers, info.device.type == "cuda", sc.repeat)
    window_start, window_samples = time.perf_counter(), 0
    for step, (low, high, rng) in zip(bar, stream, strict=True):
        lr = get_lr(step, sc.lr, sc.steps, sc.lr_decay_at)
        low, high = (t.to(info.device, memory_format=torch.channels_last, non_blocking=True) for t in (low, high))
        loss = _train_step(optimizer, lr, lambda: stage.loss(nets, low, high, rng, options, step))  # noqa: B023
        window_samples += sc.batch_size * info.world

        done = step + 1
        if done % cfg.log_every == 0 or done == sc.steps:
            rate = window_samples / max(time.perf_counter() - window_start, 1e-9)
            bar.set_postfix(loss=f"{loss.item():.4f}", samples_per_s=f"{rate:.1f}")
            metrics.write(
                {
                    "step": done,
                    "loss": round(loss.item(), 6),
                    "lr": lr,
                    "samples_per_s": round(rate, 2),
                    "time": time.time(),
                }
            )
            window_start, window_samples = time.perf_counter(), 0
        if done % cfg.checkpoint_every == 0 or done == sc.steps:
            if info.is_main:
                _save_state(cfg, name, done, trained, optimizer)
            dist.barrier(info)
        if info.is_main and (done % cfg.eval_every == 0 or done == sc.steps):
            record = _evaluate(kind, name, trained, cfg, dev, cache, done)
            metrics.write(record)
            bar.write(f"{name} step {done}: {record['eval']}")
            window_start = time.perf_counter()

    if info.is_main:
        save_file(_cpu_state(trained), str(weights_path(run_dir, name)))
    dist.barrier(info)
    dist.teardown(info)
    return folder
