r"""Draw what ClusTR clusters in an image: one block's clusters per scale, and a grid over all clustered blocks.

    python examples/visualize_clusters.py astronaut --model b0 --out clusters.png
    python examples/visualize_clusters.py photo.jpg --model outputs/demo --stage 2 --block 1 --scale coarse \
        --out clusters.png

IMAGE is an image file or the name of a scikit-image sample photo (astronaut, coffee, chelsea, ...). --model is a
folder written by save_pretrained or a variant name (b0..b3) for an untrained model. The image's shorter side is
resized to --size (default 224, aspect ratio kept), then it is rescaled and normalised by the folder's image
processor, or with ImageNet statistics without one. --size processor feeds the image processor's own transform (the
model's training input: 64x64 for the demo model, where the clusters have few tokens to show).

Writes OUT (the chosen block) and, by default, OUT with "_grid" added (all clustered blocks).
Needs matplotlib: pip install matplotlib (in a clone of clustr_hf: pip install -e ".[viz]").
"""

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModel

import clustr_hf
from clustr_hf import VARIANTS, ClusTRConfig, ClusTRModel
from clustr_hf.visualization import cluster_maps, find_block, plot_cluster_grid, plot_cluster_map


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224


def load_model(spec: str):
    """The model, its image processor (or None) and a note for the figures, from a folder or a variant name."""
    folder = Path(spec)
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise SystemExit(f"--model {spec}: the folder has no config.json; give one written by save_pretrained.")
        architectures = AutoConfig.from_pretrained(folder).architectures or []
        model_class = next((getattr(clustr_hf, name) for name in architectures if hasattr(clustr_hf, name)), AutoModel)
        model = model_class.from_pretrained(folder)
        has_processor = (folder / "preprocessor_config.json").is_file()
        processor = AutoImageProcessor.from_pretrained(folder) if has_processor else None
        return model, processor, f"model {folder.resolve().name}"
    if spec in VARIANTS:
        torch.manual_seed(0)
        return ClusTRModel(ClusTRConfig.from_variant(spec)), None, f"{spec}, untrained (random weights)"
    raise SystemExit(f"--model {spec!r} is neither a model folder nor a variant name ({', '.join(VARIANTS)}).")


def load_image(spec: str) -> Image.Image:
    """An RGB image from a file, or a scikit-image sample photo by name."""
    if Path(spec).is_file():
        return Image.open(spec).convert("RGB")
    try:
        from skimage import data
    except ImportError:
        raise SystemExit(f"IMAGE {spec!r} is not a file (sample photos by name need scikit-image).") from None
    sample = getattr(data, spec, None) if not spec.startswith("_") else None
    try:
        photo = sample() if callable(sample) else None
    except Exception as error:  # some samples are downloaded on first use
        raise SystemExit(f"IMAGE {spec!r}: the scikit-image sample could not be loaded ({error}).") from None
    if not isinstance(photo, np.ndarray) or photo.ndim not in (2, 3):
        raise SystemExit(f"IMAGE {spec!r} is neither a file nor a scikit-image sample photo (try astronaut, coffee, "
                         f"chelsea).")
    return Image.fromarray(photo).convert("RGB")


def preprocess(image: Image.Image, processor, size: int | None) -> torch.Tensor:
    """pixel_values (1, 3, H, W). Given `size`, the image's shorter side is resized to it (bicubic, aspect ratio
    kept), then rescaled and normalised by the processor, or with ImageNet statistics without one. Without `size`
    the processor transforms the image as in training (its own resize and crop); without either, `size` is 224."""
    if processor is not None and size is None:
        return processor(images=image, return_tensors="pt")["pixel_values"]
    scale = (size or DEFAULT_SIZE) / min(image.size)
    resized = image.resize([max(1, round(side * scale)) for side in image.size], Image.Resampling.BICUBIC)
    if processor is not None:
        no_crop = {"do_center_crop": False} if getattr(processor, "do_center_crop", None) else {}
        return processor(images=resized, do_resize=False, return_tensors="pt", **no_crop)["pixel_values"]
    pixels = torch.from_numpy(np.array(resized)).float() / 255
    return ((pixels - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)).permute(2, 0, 1)[None]


def display_image(pixel_values: torch.Tensor, processor, zoom: int) -> np.ndarray:
    """The model's input image back in (H * zoom, W * zoom, 3) uint8, undoing the normalisation."""
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if processor is not None:
        normalised = getattr(processor, "do_normalize", False)
        mean = getattr(processor, "image_mean", None) if normalised else (0.0, 0.0, 0.0)
        std = getattr(processor, "image_std", None) if normalised else (1.0, 1.0, 1.0)
    pixels = pixel_values[0] * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    pixels = torch.nn.functional.interpolate(pixels[None], scale_factor=zoom, mode="bilinear")[0]
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def save(figure, path: Path, compact: bool) -> None:
    """Write the figure as PNG; `compact` quantises it to 256 colours (several times smaller, e.g. for docs)."""
    if not compact:
        figure.savefig(path)
        return
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    Image.open(buffer).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def input_size(value: str) -> int | None:
    """--size: a positive number of pixels, or 'processor' (None: the image processor's own transform)."""
    if value == "processor":
        return None
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a positive number of pixels nor 'processor'")
    return int(value)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="image file, or a scikit-image sample photo name (astronaut, coffee, ...)")
    parser.add_argument("--model", required=True, help="save_pretrained folder, or variant b0..b3 (untrained)")
    parser.add_argument("--stage", type=int, help="clustered stage, from 1 (default: the first clustered stage)")
    parser.add_argument("--block", type=int, default=0, help="block within the stage, from 0 (default 0)")
    parser.add_argument("--scale", choices=("coarse", "fine", "both"), default="both",
                        help="the cluster scale to draw: coarse (fewer, larger clusters), fine, or both side by side "
                             "(default)")
    parser.add_argument("--out", type=Path, required=True, help="PNG for the chosen block")
    parser.add_argument("--grid_out", "--grid-out", type=Path,
                        help="PNG for all clustered blocks (default: OUT with _grid)")
    parser.add_argument("--size", type=input_size, default=DEFAULT_SIZE,
                        help=f"shorter image side fed to the model (default {DEFAULT_SIZE}), or 'processor' for the "
                             f"image processor's own resize and crop")
    parser.add_argument("--zoom", type=int, default=2, help="drawn pixels per input pixel (default 2)")
    parser.add_argument("--opacity", type=float, default=0.6, help="opacity of the cluster colours (default 0.6)")
    parser.add_argument("--compact", action="store_true", help="write 256-colour PNGs (smaller files)")
    args = parser.parse_args(argv)
    if args.zoom < 1:
        parser.error("--zoom must be positive.")

    model, processor, note = load_model(args.model)
    pixel_values = preprocess(load_image(args.image), processor, args.size)
    try:
        maps = cluster_maps(model, pixel_values)
    except TypeError as error:
        raise SystemExit(f"--model {args.model}: {error}") from None
    if not maps:
        raise SystemExit("This model clusters in no stage (every cluster reduction ratio is 1): nothing to draw.")
    scales = None if args.scale == "both" else [args.scale]
    image = display_image(pixel_values, processor, args.zoom)
    try:
        chosen = find_block(maps, maps[0].stage if args.stage is None else args.stage, args.block)
        block_figure = plot_cluster_map(image, chosen, scales, note=note, opacity=args.opacity)
        grid_figure = plot_cluster_grid(image, maps, scales, note=note, opacity=args.opacity)
    except (ValueError, ImportError) as error:
        raise SystemExit(str(error)) from None
    grid_out = args.grid_out or args.out.with_name(f"{args.out.stem}_grid{args.out.suffix}")
    save(block_figure, args.out, args.compact)
    save(grid_figure, grid_out, args.compact)
    print(f"{args.out}: stage {chosen.stage} block {chosen.block}, clusters {chosen.counts}; {grid_out}: "
          f"{len(maps)} clustered blocks")


if __name__ == "__main__":
    sys.exit(main())
