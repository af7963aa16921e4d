"""The three KinD training stages: which net trains, which are frozen, and the loss of one batch.

Decomposition trains first; adjustment and restoration train on its frozen outputs (``docs/kind-reference.md`` §4).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from . import losses
from .config import TrainConfig


@dataclass
class Nets:
    """The networks a stage uses; the trained one may be wrapped in DistributedDataParallel."""

    decom: nn.Module
    adjust: nn.Module
    restore: nn.Module


@dataclass(frozen=True)
class LossOptions:
    """What the stage losses take from the config: the gradient operator and the loss weights."""

    official: bool = True  # the authors' gradient operator (see training/losses.py)
    reflectance_weight: float = 0.01
    illumination_prior_steps: int = 0
    colour_weight: float = 0.0  # restoration: weight of the colour-angle term


LossFn = Callable[[Nets, torch.Tensor, torch.Tensor, np.random.Generator, LossOptions, int], torch.Tensor]


@dataclass(frozen=True)
class Stage:
    name: str
    requires: tuple[str, ...]  # stages whose finished weights this one needs
    loss: LossFn


def loss_options(cfg: TrainConfig, stage: str) -> LossOptions:
    """The options of ``stage``'s loss; the gradient operator is the stage's own setting, else the run's."""
    name = cfg.stages[stage].gradient if stage in cfg.stages and cfg.stages[stage].gradient else cfg.gradient
    return LossOptions(name == "official", cfg.reflectance_weight, cfg.illumination_prior_steps, cfg.colour_weight)


def _decom_loss(
    nets: Nets, low: torch.Tensor, high: torch.Tensor, rng: np.random.Generator, opts: LossOptions, step: int
) -> torch.Tensor:
    r_low, l_low = nets.decom(low)
    r_high, l_high = nets.decom(high)
    loss = losses.decom_loss(r_low, l_low, r_high, l_high, low, high, opts.official, opts.reflectance_weight)
    if step < opts.illumination_prior_steps:
        weight = 1 - step / opts.illumination_prior_steps
        loss = loss + weight * (losses.illumination_prior(l_low, low) + losses.illumination_prior(l_high, high))
    return loss


def adjustment_targets(
    l_low: torch.Tensor, l_high: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input L, target L, α) per sample: brighten low→high with α = 1/r, or darken high→low with α = r."""
    ratio = (l_low / (l_high + 1e-4)).mean(dim=(1, 2, 3))
    darken = torch.from_numpy(rng.random(len(ratio)) < 0.5).to(ratio.device)
    pick = darken.view(-1, 1, 1, 1)
    source = torch.where(pick, l_high, l_low)
    target = torch.where(pick, l_low, l_high)
    alpha = torch.where(darken, ratio, 1 / ratio.clamp_min(1e-4))
    return source, target, alpha


def _frozen_decomposition(
    nets: Nets, low: torch.Tensor, high: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(R_low, L_low, R_high, L_high) from the finished decomposition net, which the later stages do not train."""
    with torch.no_grad():
        r_low, l_low = nets.decom(low)
        r_high, l_high = nets.decom(high)
    return r_low, l_low, r_high, l_high


def _adjust_loss(
    nets: Nets, low: torch.Tensor, high: torch.Tensor, rng: np.random.Generator, opts: LossOptions, step: int
) -> torch.Tensor:
    _, l_low, _, l_high = _frozen_decomposition(nets, low, high)
    source, target, alpha = adjustment_targets(l_low, l_high, rng)
    return losses.adjust_loss(nets.adjust(source, alpha), target, opts.official)


def _restore_loss(
    nets: Nets, low: torch.Tensor, high: torch.Tensor, rng: np.random.Generator, opts: LossOptions, step: int
) -> torch.Tensor:
    r_low, l_low, r_high, _ = _frozen_decomposition(nets, low, high)
    return losses.restore_loss(nets.restore(r_low, l_low), r_high**1.2, opts.official, opts.colour_weight)


STAGES: dict[str, Stage] = {
    "decom": Stage("decom", (), _decom_loss),
    "adjust": Stage("adjust", ("decom",), _adjust_loss),
    "restore": Stage("restore", ("decom",), _restore_loss),
}
