"""The α-independent parts of an enhancement, and re-lighting from them.

KinD's decomposition (R, L) and restoration (R̂) depend only on the image; the light level α enters through
the small adjustment net and the output composition. :class:`Parts` holds what the composition needs of an
image — the normalised input S, R, L, R̂, the grey mask of R and the detail R̂ lost (photo mode's) as one
full-image tensor, its span, its α preview and its mean luminance — so that any number of light levels can be
composed from one run of the big networks.

This module owns the layout of that tensor (:data:`CHANNELS`), the networks' part of a tile
(:func:`parts_batch`), the α part of a region (:func:`adjust`, then :func:`compose_batch`) and the windows
re-lighting runs on (:func:`relight_windows`: tiles with :data:`RELIGHT_HALO` pixels of context, so a tiled
re-lighting equals a whole-image one). The adjustment net, most of a re-lighting's work, runs once per pixel:
on windows with only its own reach of context (:func:`adjust_windows`), into a whole-image L̂ that the
composition's regions then read. :mod:`model.recipe` strings them together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .compose import DETAIL_SIGMA, GREY_SIGMA, Mode, blur_radius, compose, grey_mask, lost_detail, luminance
from .networks import Networks
from .tiling import TILE_ALIGN, Window

# S (3), R (3), L (1), R̂ (3), and photo mode's grey mask of R (1, model.compose.grey_mask) and lost detail (1,
# model.compose.lost_detail): the composition's inputs, in this order along dim 1 of Parts.maps
CHANNELS = 12
NETWORK_CHANNELS = 7  # R, L, R̂: what the networks add to S
NETWORK_SLICE = slice(3, 3 + NETWORK_CHANNELS)
# float16 keeps 11 significant bits: the parts of a [0, 1] image to within 2.5e-4, far inside the output's
# 1/255 step, at half of float32's memory (bfloat16's 8 bits came within a factor of two of that step)
PARTS_DTYPE = torch.float16
# context around each re-lighting tile: the composition reaches 36 px (the gain limit's 8-px cells three deep,
# the σ 3 chroma blur) and the adjustment net 4 px; the grey mask's blur is in the parts already
RELIGHT_HALO = 48
# rows of parts whose grey mask is made at once: a band's float32 working set, where the whole of a 12 MP
# image's took a gigabyte
MASK_BAND = 512
# rows of a region the adjustment net runs on at once, with its reach (four 3×3 convs) of context: its 32-channel
# activations are then a band's, not the region's (~170 MB each for a 1632² region in bf16)
ADJUST_BAND, ADJUST_REACH = 512, 4
# re-lighting tiles are this many times the networks' tile a side: the adjustment net and the composition
# need a fraction of the networks' memory per pixel; below 1.5 the halo's share costs time (12 MP, two
# threads: 1× took 11 % longer than 1.5×, and 2× was no faster but held ~150 MB more per region)
RELIGHT_SCALE = 1.5


class Parts(NamedTuple):
    """α-independent results for one image (see the module docstring).

    ``maps``: 1×:data:`CHANNELS`×H×W (S, R, L, R̂, grey mask, lost detail), float32 or :data:`PARTS_DTYPE`;
    ``span``: the raw image's range (:func:`model.normalise.span`); ``preview``: the normalised α preview
    (float32, :func:`model.auto_alpha.preview`); ``mean_luminance``: the raw input's mean Rec. 709 luminance;
    ``scale``: how many times finer the maps are than the networks ran (:data:`model.multires.FAST_FACTOR` on
    the fast path, else 1): the adjustment net runs at the networks' resolution too (:func:`adjust`).
    """

    maps: torch.Tensor
    span: float
    preview: torch.Tensor
    mean_luminance: float
    scale: int = 1

    @property
    def height(self) -> int:
        return self.maps.shape[-2]

    @property
    def width(self) -> int:
        return self.maps.shape[-1]

    @property
    def nbytes(self) -> int:
        """Memory held by the tensors."""
        return sum(t.element_size() * t.nelement() for t in (self.maps, self.preview))

    @property
    def reflectance(self) -> torch.Tensor:
        return self.maps[:, 3:6]

    @property
    def illumination(self) -> torch.Tensor:
        return self.maps[:, 6:7]

    def exposure_gain(self, output: torch.Tensor) -> float:
        """How much lighter ``output`` (1×3×H×W in [0, 1], or its 1×3×1×1 channel means) is than the input:
        ratio of mean luminances."""
        mean = luminance(output.float().mean(dim=(2, 3), keepdim=True))
        return float(mean) / max(self.mean_luminance, 1e-6)


def parts_batch(kind: Networks, image: torch.Tensor) -> torch.Tensor:
    """R, L and R̂ of a normalised N×3×h×w batch, concatenated: N×:data:`NETWORK_CHANNELS`×h×w."""
    reflectance, illumination = kind.decompose(image)
    restored = kind.restore(reflectance, illumination)
    return torch.cat([reflectance, illumination, restored], dim=1)


def photo_maps(networks: torch.Tensor, span: torch.Tensor | float) -> torch.Tensor:
    """Photo mode's α-independent maps of the networks' N×:data:`NETWORK_CHANNELS`×h×w output (R, L, R̂, as
    :func:`parts_batch` lays it out) for raw images of range ``span``: the grey mask and the lost detail,
    N×2×h×w float32, the last two channels of the parts."""
    reflectance, illumination, restored = networks[:, :3], networks[:, 3:4], networks[:, 4:7]
    return torch.cat([grey_mask(reflectance), lost_detail(reflectance, illumination, restored, span)], dim=1)


def parts_canvas(s: torch.Tensor, dtype: torch.dtype = PARTS_DTYPE) -> torch.Tensor:
    """1×:data:`CHANNELS`×H×W maps holding S (1×3×H×W); the networks' slots (:data:`NETWORK_SLICE`) and photo
    mode's maps are left to fill (:func:`complete` fills them)."""
    maps = torch.empty((1, CHANNELS, *s.shape[-2:]), dtype=dtype)
    maps[:, :3] = s
    return maps


def complete(maps: torch.Tensor, span: float, lo: float, preview: torch.Tensor, scale: int = 1) -> Parts:
    """:class:`Parts` from 1×:data:`CHANNELS`×H×W ``maps`` whose last two channels, the grey mask and the lost
    detail, are still to be filled (in place, from R, L and R̂ over the whole image: tiles leave no trace in
    them), the raw image's span and minimum ``lo`` (S·span + lo is the raw image), the α preview, and the scale
    the networks ran at (:class:`Parts`).

    Works in bands of :data:`MASK_BAND` rows, each read with the blurs' reach of context above and below, so
    the float32 working set is a band's, not the image's, and the maps are the whole-image ones.
    """
    height, width = maps.shape[-2:]
    reach = max(blur_radius(GREY_SIGMA), blur_radius(DETAIL_SIGMA))
    s_sum = torch.zeros(1, 3, 1, 1, dtype=torch.float64)
    for top in range(0, height, MASK_BAND):
        bottom = min(top + MASK_BAND, height)
        above, below = max(top - reach, 0), min(bottom + reach, height)
        photo = photo_maps(maps[:, NETWORK_SLICE, above:below].float(), span)
        maps[:, 10:, top:bottom] = photo[..., top - above : bottom - above, :]
        s_sum += maps[:, :3, top:bottom].sum(dim=(2, 3), keepdim=True, dtype=torch.float64)
    # Rec. 709's weights sum to 1, so the raw image's mean luminance is S's scaled back
    raw_mean = float(luminance(s_sum / (height * width))) * span + lo
    return Parts(maps, span, preview.float(), raw_mean, scale)


def composition_inputs(maps: torch.Tensor, adjusted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views of what the composition reads of regions of parts (N×:data:`CHANNELS`×h×w) and of their adjusted
    illumination (N×1×h×w): S; L, R̂, the grey mask and the lost detail; L̂. R is left out: it served only to
    make those two.
    Joined along the channels (:func:`join`), they are :func:`compose_batch`'s input."""
    return maps[:, :3], maps[:, 6:], adjusted


def join(items: Sequence[Sequence[torch.Tensor]], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Items of 1×Cᵢ×h×w tensors (the same shapes in every item) as one N×ΣCᵢ×h×w batch of ``dtype``: each
    tensor written once, in place, where ``torch.cat`` of ``torch.cat`` would copy twice."""
    first = items[0]
    batch = torch.empty((len(items), sum(t.shape[1] for t in first), *first[0].shape[2:]), dtype=dtype)
    for i, item in enumerate(items):
        channel = 0
        for t in item:
            batch[i : i + 1, channel : channel + t.shape[1]] = t
            channel += t.shape[1]
    return batch


def compose_batch(x: torch.Tensor, alpha: torch.Tensor | float, mode: Mode, span: torch.Tensor | float) -> torch.Tensor:
    """Enhanced N×3×h×w output of N regions' joined :func:`composition_inputs` (float, N×10×h×w) at light level
    ``alpha``."""
    s, l, restored, mask, detail, adjusted = x[:, :3], x[:, 3:4], x[:, 4:7], x[:, 7:8], x[:, 8:9], x[:, 9:10]
    return compose(s, None, l, restored, adjusted, mode, span, alpha, mask=mask, detail=detail)


def relight_batch(
    kind: Networks,
    maps: torch.Tensor,
    alpha: torch.Tensor | float,
    mode: Mode,
    span: torch.Tensor | float,
    scale: int = 1,
) -> torch.Tensor:
    """:func:`compose_batch` of regions of parts (N×:data:`CHANNELS`×h×w) with their illumination adjusted in
    place: the whole re-lighting in one graph (ONNX export); ``scale``: the parts' (:attr:`Parts.scale`)."""
    inputs = composition_inputs(maps, adjust(kind, maps[:, 6:7], alpha, scale))
    return compose_batch(torch.cat(inputs, dim=1), alpha, mode, span)


def adjust(kind: Networks, illumination: torch.Tensor, alpha: torch.Tensor | float, scale: int = 1) -> torch.Tensor:
    """The adjustment net on N×1×h×w ``illumination``, in bands of :data:`ADJUST_BAND` rows (each read with
    :data:`ADJUST_REACH` rows of context, so the result is the whole region's).

    ``scale`` > 1: on ``illumination`` averaged over ``scale``² blocks, the result upsampled bilinearly. The fast
    path's L is lifted from that resolution, so the net sees nearly the same map at a ``scale``²-th of the work
    (docs/performance.md measures the difference). Blocks lie on the image's grid when a region's origin is a
    multiple of ``scale`` (:func:`relight_windows`' are).
    """
    if scale > 1:
        h, w = illumination.shape[-2:]
        low = adjust(kind, F.avg_pool2d(illumination, scale, ceil_mode=True), alpha)
        # scale_factor, not size: every region maps its pixels onto the low grid as the whole image does
        return F.interpolate(low, scale_factor=scale, mode="bilinear", align_corners=False)[..., :h, :w]
    height = illumination.shape[-2]
    if height <= ADJUST_BAND + 2 * ADJUST_REACH:
        return kind.adjust(illumination, alpha)
    bands = []
    for top in range(0, height, ADJUST_BAND):
        bottom = min(top + ADJUST_BAND, height)
        above, below = max(top - ADJUST_REACH, 0), min(bottom + ADJUST_REACH, height)
        bands.append(kind.adjust(illumination[..., above:below, :], alpha)[..., top - above : bottom - above, :])
    return torch.cat(bands, dim=-2)


def relight_tile(tile_size: int) -> int:
    """The side of the re-lighting tiles for the networks' ``tile_size`` (:data:`RELIGHT_SCALE` times it)."""
    return int(RELIGHT_SCALE * tile_size)


def relight_windows(
    height: int, width: int, tile: int, halo: int = RELIGHT_HALO, align: int = TILE_ALIGN
) -> list[tuple[Window, Window]]:
    """(region, core) pairs covering an image: the cores tile it without overlap, each at most ``tile`` a side;
    a region is its core grown by ``halo`` rounded up to a multiple of ``align`` (inside the image); the core is
    given relative to its region.

    Origins are then multiples of ``align``: by default :data:`~model.tiling.TILE_ALIGN`, so a region sees the
    composition's 8-px gain cells on the whole image's grid; with the halo, each core comes out as it would
    from the whole image.
    """
    if max(height, width) <= tile:
        whole = Window(0, 0, height, width)
        return [(whole, whole)]
    step = max(TILE_ALIGN, tile // TILE_ALIGN * TILE_ALIGN)
    halo = -(-halo // align) * align
    pairs = []
    for top in range(0, height, step):
        for left in range(0, width, step):
            h, w = min(step, height - top), min(step, width - left)
            r_top, r_left = max(top - halo, 0), max(left - halo, 0)
            r_bottom, r_right = min(top + h + halo, height), min(left + w + halo, width)
            region = Window(r_top, r_left, r_bottom - r_top, r_right - r_left)
            pairs.append((region, Window(top - r_top, left - r_left, h, w)))
    return pairs


def adjust_windows(height: int, width: int, tile: int, scale: int = 1) -> list[tuple[Window, Window]]:
    """(window, core) pairs for :func:`adjust` over an image: :func:`relight_windows`' cores, each grown by just
    what the net reaches (:data:`ADJUST_REACH`), so the cores' L̂ is the whole image's, at a few percent of
    overlap where the composition's regions overlap by ~14 % (12 MP).

    At ``scale`` > 1 the net reaches that many times further, plus one low-resolution pixel for the bilinear
    upsampling, and windows start on the ``scale``² blocks' grid.
    """
    reach = ADJUST_REACH if scale == 1 else scale * (ADJUST_REACH + 1)
    return relight_windows(height, width, tile, halo=reach, align=scale)


def in_image(where: Window, core: Window) -> Window:
    """Where the ``core`` of window ``where`` (given relative to it) lies in the image."""
    return Window(where.top + core.top, where.left + core.left, core.height, core.width)


def region(x: torch.Tensor, window: Window) -> torch.Tensor:
    """The ``window`` of an N×C×H×W tensor (a view)."""
    return x[..., window.top : window.top + window.height, window.left : window.left + window.width]
