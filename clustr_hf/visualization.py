"""See what ClusTR clusters: per clustered block, the token clusters of an image laid out on the stage's grid, and
pictures of them. The bookkeeping (`cluster_maps`), the colouring (`cluster_colours`, `cluster_overlay`) and the quick
picture (`draw_cluster_grid`) need only torch, numpy and PIL; the figures (`plot_cluster_map`, `plot_cluster_grid`)
need matplotlib (`pip install matplotlib`; in a clone: `pip install -e ".[viz]"`), imported only when they are drawn.
"""

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch

from .modeling_clustr import ClusTRModel, ClusTRPreTrainedModel, block_cluster_counts


@dataclass(frozen=True)
class BlockClusters:
    """The clusters one clustered block made of a batch of images.

    `stage` counts from 1 (as `stage1`..`stage4` and the paper do), `block` from 0 within its stage (as
    `encoder.stages[stage - 1].blocks[block]` and the reference's `block{stage}.{block}`). `grid` is the stage's
    (height, width) in tokens. Per scale (in config order: coarse first in every variant), `scale_names[s]` names
    it and `counts[s]` is its number of clusters. `assignments` (B, scales, height, width) holds each token's
    cluster; `centres` (B, max(counts), 2) the (row, col) of the cluster centres, best first: the centres of scale s
    are the first `counts[s]`, and the centre of cluster c of any scale is `centres[:, c]`.
    """

    stage: int
    block: int
    grid: tuple[int, int]
    scale_names: tuple[str, ...]
    counts: tuple[int, ...]
    assignments: torch.LongTensor
    centres: torch.LongTensor

    def scale_index(self, name: str) -> int:
        """The position of the scale called `name` ("coarse", "fine", ...)."""
        if name not in self.scale_names:
            raise ValueError(f"Unknown scale {name!r}; this model's scales are {', '.join(self.scale_names)}.")
        return self.scale_names.index(name)


def scale_names(cluster_scales) -> tuple[str, ...]:
    """Names of the cluster scales in config order: fewest clusters "coarse", most "fine", others by position."""
    order = sorted(range(len(cluster_scales)), key=lambda index: (cluster_scales[index], index))
    names = [f"scale {index}" for index in range(len(cluster_scales))]
    names[order[-1]] = "fine"
    names[order[0]] = "coarse"
    return tuple(names)


@torch.no_grad()
def cluster_maps(model: ClusTRPreTrainedModel, pixel_values: torch.Tensor) -> list[BlockClusters]:
    """The clusters of every clustered block (stages with cluster reduction ratio > 1, in order) for a batch of images.

    Accepts a `ClusTRModel` or any model built on one (classifier, backbone); runs it once in eval mode (dropout and
    drop path off, as at inference) and restores its mode afterwards.
    """
    base = getattr(model, "base_model", None)
    if not isinstance(base, ClusTRModel):
        raise TypeError(
            f"cluster_maps needs a ClusTR model (ClusTRModel, ClusTRForImageClassification or ClusTRBackbone), "
            f"got {type(model).__name__}."
        )
    was_training = base.training
    base.eval()
    try:
        outputs = base(pixel_values, output_hidden_states=True, output_cluster_assignments=True, return_dict=True)
    finally:
        base.train(was_training)
    return cluster_maps_from_outputs(base.config, outputs)


def cluster_maps_from_outputs(config, outputs) -> list[BlockClusters]:
    """`cluster_maps` of the outputs of a forward pass the caller ran (ClusTRModel's or the classifier's, with
    `output_hidden_states=True, output_cluster_assignments=True`): predictions and clusters from one forward pass."""
    if outputs.cluster_assignments is None or outputs.hidden_states is None:
        raise ValueError("cluster_maps_from_outputs needs the outputs of a forward pass run with "
                         "output_hidden_states=True and output_cluster_assignments=True.")
    names = scale_names(config.cluster_scales)
    clustered_blocks = [
        (stage, block, ratio)
        for stage, (depth, ratio) in enumerate(zip(config.depths, config.cluster_reduction_ratios), start=1)
        if ratio > 1
        for block in range(depth)
    ]
    maps = []
    for (stage, block, ratio), assignments, centres in zip(
        clustered_blocks, outputs.cluster_assignments, outputs.cluster_centres
    ):
        height, width = outputs.hidden_states[stage - 1].shape[-2:]
        maps.append(
            BlockClusters(
                stage=stage,
                block=block,
                grid=(height, width),
                scale_names=names,
                counts=block_cluster_counts(config, height * width, ratio),
                assignments=assignments.unflatten(-1, (height, width)),
                centres=torch.stack((centres // width, centres % width), dim=-1),
            )
        )
    return maps


def find_block(maps: list[BlockClusters], stage: int, block: int) -> BlockClusters:
    """The clusters of block `block` of stage `stage` from `cluster_maps`, or an error naming the valid choices."""
    stages = sorted({clusters.stage for clusters in maps})
    in_stage = [clusters for clusters in maps if clusters.stage == stage]
    if not in_stage:
        raise ValueError(
            f"Stage {stage} has no clustered blocks (it does not exist, or its cluster reduction ratio is 1: full "
            f"attention); the clustered stages are {', '.join(map(str, stages))}."
        )
    if not 0 <= block < len(in_stage):
        raise ValueError(f"Stage {stage} has blocks 0 to {len(in_stage) - 1} (counted from 0), not block {block}.")
    return in_stage[block]


_OKLAB_TO_LMS = np.array([
    [1.0, 0.3963377774, 0.2158037573],
    [1.0, -0.1055613458, -0.0638541728],
    [1.0, -0.0894841775, -1.2914855480],
])
_LMS_TO_LINEAR_SRGB = np.array([
    [4.0767416621, -3.3077115913, 0.2309699292],
    [-1.2684380046, 2.6097574011, -0.3413193965],
    [-0.0041960863, -0.7034186147, 1.7076147010],
])


def _oklab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """OKLab (..., 3) to gamma-encoded sRGB, in [0, 1] for colours inside the sRGB gamut (Ottosson's matrices)."""
    linear = (lab @ _OKLAB_TO_LMS.T) ** 3 @ _LMS_TO_LINEAR_SRGB.T
    magnitude = np.abs(linear)
    encoded = np.where(magnitude <= 0.0031308, 12.92 * magnitude, 1.055 * magnitude ** (1 / 2.4) - 0.055)
    return np.sign(linear) * encoded


@lru_cache(maxsize=1)
def _candidate_colours() -> tuple[np.ndarray, np.ndarray]:
    """Mid-light, clearly coloured sRGB colours (uint8) and their OKLab coordinates: the pool palettes draw from."""
    lightness, a, b = np.meshgrid(np.linspace(0.5, 0.9, 17), np.linspace(-0.3, 0.3, 61), np.linspace(-0.3, 0.3, 61),
                                  indexing="ij")
    lab = np.stack((lightness, a, b), axis=-1).reshape(-1, 3)
    lab = lab[np.hypot(lab[:, 1], lab[:, 2]) >= 0.07]
    srgb = _oklab_to_srgb(lab)
    in_gamut = np.all((srgb >= 0) & (srgb <= 1), axis=1)
    rgb, unique = np.unique(np.round(srgb[in_gamut] * 255).astype(np.uint8), axis=0, return_index=True)
    return rgb, lab[in_gamut][unique]


@lru_cache(maxsize=16)
def distinct_colours(count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` pairwise different colours spread as far apart as possible in OKLab (a perceptual colour space).

    Greedy farthest-point selection from a pool of saturated, mid-light colours: every next colour is the one
    farthest from all chosen so far, so any prefix is itself well spread. Returns the (count, 3) uint8 sRGB colours
    and their (count, 3) OKLab coordinates.
    """
    rgb, lab = _candidate_colours()
    if not 1 <= count <= len(rgb):
        raise ValueError(f"distinct_colours can give 1 to {len(rgb)} colours, not {count}.")
    chosen = [int(np.argmax(lab[:, 1]))]  # the most red-magenta candidate (largest a), a fixed start
    nearest = np.linalg.norm(lab - lab[chosen[0]], axis=1)
    for _ in range(count - 1):
        chosen.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, np.linalg.norm(lab - lab[chosen[-1]], axis=1))
    rgb, lab = rgb[chosen], lab[chosen]
    rgb.flags.writeable = lab.flags.writeable = False  # shared by the cache
    return rgb, lab


@lru_cache(maxsize=16)
def _palette_distances(count: int) -> np.ndarray:
    """(count, count) OKLab distances between the colours of `distinct_colours(count)`."""
    _, lab = distinct_colours(count)
    distances = np.linalg.norm(lab[:, None] - lab[None], axis=-1)
    distances.flags.writeable = False  # shared by the cache
    return distances


def cluster_colours(assignment_map, num_clusters: int | None = None) -> np.ndarray:
    """A different colour for every cluster of one (height, width) assignment map, (num_clusters, 3) uint8.

    Clusters are numbered by centre score, not by place, so colours go by the map: clusters are coloured most
    neighbours first (4-neighbourhood on the grid), each taking the unused palette colour farthest from its
    already coloured neighbours, which keeps touching clusters clearly apart.
    """
    labels = np.asarray(assignment_map)
    num_clusters = int(labels.max()) + 1 if num_clusters is None else num_clusters
    rgb, _ = distinct_colours(num_clusters)
    distances = _palette_distances(num_clusters)
    first = np.concatenate((labels[:, :-1].ravel(), labels[:-1].ravel()))
    second = np.concatenate((labels[:, 1:].ravel(), labels[1:].ravel()))
    touching = first != second
    first, second = first[touching], second[touching]
    pairs = np.unique(np.concatenate((first * num_clusters + second, second * num_clusters + first)))
    # pairs in both directions, sorted by their first cluster: the neighbours of each cluster
    neighbours = np.split(pairs % num_clusters, np.searchsorted(pairs // num_clusters, np.arange(1, num_clusters)))
    order = sorted(range(num_clusters), key=lambda cluster: -len(neighbours[cluster]))
    colour_of = np.full(num_clusters, -1)
    unused = np.ones(num_clusters, dtype=bool)
    for cluster in order:
        coloured = colour_of[neighbours[cluster]]
        coloured = coloured[coloured >= 0]
        if len(coloured):
            distance = distances[:, coloured].min(axis=1)
            colour_of[cluster] = int(np.argmax(np.where(unused, distance, -1.0)))
        else:
            colour_of[cluster] = int(np.argmax(unused))
        unused[colour_of[cluster]] = False
    return rgb[colour_of]


def token_pixels(grid: tuple[int, int], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """For a picture of `size` (height, width) pixels over a token `grid`, the token row of every pixel row and the
    token column of every pixel column: the grid is stretched evenly over the picture."""
    return (np.arange(size[0]) * grid[0] // size[0], np.arange(size[1]) * grid[1] // size[1])


def cluster_overlay(image, assignment_map, colours, opacity: float = 0.6, boundary_colour=(255, 255, 255)):
    """The image with every token's area tinted by its cluster's colour and the cluster boundaries drawn.

    `image` (height, width, 3) uint8; `assignment_map` (grid height, grid width) cluster numbers, stretched over the
    image; `colours` (clusters, 3) uint8; `opacity` of the tint (1 = colours only); `boundary_colour` an RGB triple,
    or None for no boundaries. A boundary pixel is one whose token's cluster differs from the one right or below.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be a (height, width, 3) uint8 array, got {image.shape} of {image.dtype}.")
    if not 0 <= opacity <= 1:
        raise ValueError(f"opacity={opacity} must lie in [0, 1].")
    labels = np.asarray(assignment_map)
    rows, cols = token_pixels(labels.shape, image.shape[:2])
    pixel_labels = labels[rows[:, None], cols[None, :]]
    tinted = (1 - opacity) * image + opacity * np.asarray(colours)[pixel_labels].astype(np.float64)
    overlay = np.round(tinted).astype(np.uint8)
    if boundary_colour is not None:
        boundary = np.zeros(pixel_labels.shape, dtype=bool)
        boundary[:, :-1] |= pixel_labels[:, :-1] != pixel_labels[:, 1:]
        boundary[:-1] |= pixel_labels[:-1] != pixel_labels[1:]
        overlay[boundary] = boundary_colour
    return overlay


def centre_pixels(clusters: BlockClusters, scale: int, size: tuple[int, int], image_index: int = 0) -> np.ndarray:
    """(x, y) pixel coordinates of the middle of every centre token of `scale` in a picture of `size` (h, w)."""
    rows_cols = clusters.centres[image_index, : clusters.counts[scale]].numpy()
    cell_height, cell_width = size[0] / clusters.grid[0], size[1] / clusters.grid[1]
    return np.stack(((rows_cols[:, 1] + 0.5) * cell_width, (rows_cols[:, 0] + 0.5) * cell_height), axis=1)


def _matplotlib():
    """matplotlib's Figure and legend artists, or an error saying how to install the optional extra."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
    except ImportError as error:
        raise ImportError(
            "Drawing cluster maps needs matplotlib, an optional extra: pip install matplotlib (in a clone of "
            "clustr_hf: pip install -e \".[viz]\")"
        ) from error
    return Figure, Line2D, Patch


def _marker_points(clusters: BlockClusters, size: tuple[int, int], dpi: float) -> float:
    """Centre marker area in points^2: about half a token wide, 4 to 12 pixels across."""
    diameter_pixels = min(max(0.5 * size[1] / clusters.grid[1], 4), 12)
    return (diameter_pixels * 72 / dpi) ** 2


def _panels(clusters: BlockClusters, scales) -> list[int]:
    """Scale positions to draw: the named ones, or all."""
    return list(range(len(clusters.counts))) if scales is None else [clusters.scale_index(name) for name in scales]


def _resize(image: np.ndarray, width: int) -> np.ndarray:
    """The (height, width, 3) uint8 image scaled (antialiased) to `width` pixels wide, keeping its aspect ratio."""
    height = max(1, round(image.shape[0] * width / image.shape[1]))
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    scaled = torch.nn.functional.interpolate(pixels, size=(height, width), mode="bilinear", antialias=True)
    return scaled[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


LEGEND_HEIGHT = 80
"""Pixels below each panel of `plot_cluster_map` that hold its legend."""
MIN_PANEL_WIDTH = 280
"""Narrowest panel of `plot_cluster_map` in pixels, so that its legend fits under a small image."""


def plot_cluster_map(image, clusters: BlockClusters, scales=None, image_index: int = 0, note: str = "",
                     opacity: float = 0.6, dpi: float = 100):
    """One block's clusters over the image, one panel per scale side by side, with a legend under each.

    Each panel shows `cluster_overlay` pixel for pixel (the image's own size, no resampling, at the panel's top
    left) with the cluster centres marked; the legend names stage, block, scale, cluster count and `note` (e.g. the
    model). `scales` picks scales by name (default all). Panels are max(image width, MIN_PANEL_WIDTH) pixels wide,
    so the Figure has (panel width * panels, image height + LEGEND_HEIGHT) pixels at `dpi`; save it with
    `figure.savefig(path)` (without bbox_inches, which would crop it).
    """
    Figure, Line2D, Patch = _matplotlib()
    image = np.asarray(image)
    height, width = image.shape[:2]
    panels = _panels(clusters, scales)
    panel_width, total_height = max(width, MIN_PANEL_WIDTH), height + LEGEND_HEIGHT
    total_width = panel_width * len(panels)
    figure = Figure(figsize=(total_width / dpi, total_height / dpi), dpi=dpi)
    for position, scale in enumerate(panels):
        labels = clusters.assignments[image_index, scale].numpy()
        colours = cluster_colours(labels, clusters.counts[scale])
        left = position * panel_width
        figure.figimage(cluster_overlay(image, labels, colours, opacity), xo=left, yo=LEGEND_HEIGHT, origin="upper")
        markers = figure.add_axes(
            (left / total_width, LEGEND_HEIGHT / total_height, width / total_width, height / total_height), zorder=1
        )  # zorder 1: over the figure images, which are drawn after axes of equal zorder
        markers.set_axis_off()
        markers.set_xlim(0, width)
        markers.set_ylim(height, 0)
        x, y = centre_pixels(clusters, scale, (height, width), image_index).T
        markers.scatter(x, y, s=_marker_points(clusters, (height, width), dpi), c="white", edgecolors="black",
                        linewidths=1)
        legend_axes = figure.add_axes((left / total_width, 0, panel_width / total_width, LEGEND_HEIGHT / total_height))
        legend_axes.set_axis_off()
        title = f"stage {clusters.stage} · block {clusters.block} · {clusters.scale_names[scale]} scale"
        handles = [
            Patch(facecolor=colours[0] / 255, edgecolor="black", label=f"{clusters.counts[scale]} clusters"),
            Line2D([], [], linestyle="none", marker="o", markerfacecolor="white", markeredgecolor="black",
                   label="centres"),
        ]
        legend_axes.legend(handles=handles, title=f"{title}\n{note}" if note else title, loc="center", ncol=2,
                           frameon=False, fontsize=9, title_fontsize=9)
    return figure


def plot_cluster_grid(image, maps: list[BlockClusters], scales=None, image_index: int = 0, note: str = "",
                      opacity: float = 0.6, panel_inches: float = 2.2, dpi: float = 100):
    """Every clustered block's clusters over the image in one figure: a panel per (block, scale), blocks in model
    order, scales of a block side by side, titled with stage, block, scale and cluster count; `note` as the heading."""
    Figure, _, _ = _matplotlib()
    image = _resize(np.asarray(image), round(panel_inches * dpi))
    panels = [(clusters, scale) for clusters in maps for scale in _panels(clusters, scales)]
    per_block = len(panels) // len(maps)
    columns = per_block * max(1, round((len(maps) / per_block) ** 0.5))
    rows = -(-len(panels) // columns)
    aspect = image.shape[0] / image.shape[1]
    figure = Figure(figsize=(panel_inches * columns, (panel_inches * aspect + 0.3) * rows + 0.4), dpi=dpi,
                    layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, (clusters, scale) in zip(axes, panels):
        labels = clusters.assignments[image_index, scale].numpy()
        ax.imshow(cluster_overlay(image, labels, cluster_colours(labels, clusters.counts[scale]), opacity),
                  interpolation="nearest")
        x, y = centre_pixels(clusters, scale, image.shape[:2], image_index).T
        ax.scatter(x, y, s=_marker_points(clusters, image.shape[:2], dpi) / 2, c="white", edgecolors="black",
                   linewidths=0.6)
        ax.set_title(f"stage {clusters.stage} block {clusters.block}: {clusters.scale_names[scale]}, "
                     f"{clusters.counts[scale]} clusters", fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    figure.suptitle(f"ClusTR clusters per block{f' — {note}' if note else ''}", fontsize=10)
    return figure


PANEL_MIN_SIDE = 128
"""`draw_cluster_grid` enlarges images smaller than this (pixels, longer side) by a whole factor, nearest pixel."""
HEADING_HEIGHT = 22
"""Pixels above the panels of `draw_cluster_grid` that hold its heading."""
CAPTION_HEIGHT = 32
"""Pixels above each panel of `draw_cluster_grid` that hold its caption (two lines)."""
PANEL_GAP = 6
"""White pixels around and between the panels of `draw_cluster_grid`."""
MAX_MARKER_RADIUS = 5
"""Largest radius in pixels of the centre dots of `draw_cluster_grid` (a quarter of a token, 2 to this)."""


@lru_cache(maxsize=1)
def _caption_font() -> PIL.ImageFont.ImageFont:
    """PIL's built-in font at 12 pixels (no font files needed)."""
    return PIL.ImageFont.load_default(size=12)


def panel_enlargement(size: tuple[int, int]) -> int:
    """The whole factor `draw_cluster_grid` enlarges an image of `size` (height, width) by: 1 from PANEL_MIN_SIDE."""
    return max(1, math.ceil(PANEL_MIN_SIDE / max(size)))


def draw_cluster_grid(image, maps: list[BlockClusters], scales=None, image_index: int = 0, note: str = "",
                      opacity: float = 0.6) -> PIL.Image.Image:
    """Every clustered block's clusters over the image in one RGB picture, drawn with numpy and PIL only (in
    milliseconds, for an app's answer): a row per block in model order, a panel per scale, each captioned with stage
    and block, scale and cluster count; `note` in the heading.

    A panel is `cluster_overlay` of the image enlarged by `panel_enlargement` (nearest pixel: every image pixel a
    square), with a white dot outlined in black on each cluster centre. Panels of H x W pixels lie at
    x = PANEL_GAP + column * (W + PANEL_GAP), y = HEADING_HEIGHT + row * (CAPTION_HEIGHT + H + PANEL_GAP) +
    CAPTION_HEIGHT.
    """
    image = np.asarray(image)
    factor = panel_enlargement(image.shape[:2])
    image = image.repeat(factor, axis=0).repeat(factor, axis=1)
    height, width = image.shape[:2]
    columns = max(len(_panels(clusters, scales)) for clusters in maps)
    canvas = np.full((HEADING_HEIGHT + len(maps) * (CAPTION_HEIGHT + height + PANEL_GAP),
                      PANEL_GAP + columns * (width + PANEL_GAP), 3), 255, dtype=np.uint8)
    placed = []
    for row, clusters in enumerate(maps):
        for column, scale in enumerate(_panels(clusters, scales)):
            left, top = PANEL_GAP + column * (width + PANEL_GAP), HEADING_HEIGHT + row * (
                CAPTION_HEIGHT + height + PANEL_GAP) + CAPTION_HEIGHT
            labels = clusters.assignments[image_index, scale].numpy()
            canvas[top:top + height, left:left + width] = cluster_overlay(
                image, labels, cluster_colours(labels, clusters.counts[scale]), opacity)
            placed.append((clusters, scale, left, top))
    picture = PIL.Image.fromarray(canvas)
    draw, font = PIL.ImageDraw.Draw(picture), _caption_font()
    draw.text((PANEL_GAP, 4), f"ClusTR clusters per block{f': {note}' if note else ''}", fill="black", font=font)
    for clusters, scale, left, top in placed:
        draw.text((left, top - CAPTION_HEIGHT + 2), f"stage {clusters.stage} block {clusters.block}\n"
                  f"{clusters.scale_names[scale]}: {clusters.counts[scale]} clusters", fill="black", font=font)
        radius = min(max(width / clusters.grid[1] / 4, 2), MAX_MARKER_RADIUS)
        for x, y in centre_pixels(clusters, scale, (height, width), image_index):
            draw.ellipse((left + x - radius, top + y - radius, left + x + radius, top + y + radius), fill="white",
                         outline="black")
    return picture


__all__ = [
    "CAPTION_HEIGHT",
    "HEADING_HEIGHT",
    "LEGEND_HEIGHT",
    "MAX_MARKER_RADIUS",
    "MIN_PANEL_WIDTH",
    "PANEL_GAP",
    "PANEL_MIN_SIDE",
    "BlockClusters",
    "centre_pixels",
    "cluster_colours",
    "cluster_maps",
    "cluster_maps_from_outputs",
    "cluster_overlay",
    "distinct_colours",
    "draw_cluster_grid",
    "find_block",
    "panel_enlargement",
    "plot_cluster_grid",
    "plot_cluster_map",
    "scale_names",
    "token_pixels",
]
