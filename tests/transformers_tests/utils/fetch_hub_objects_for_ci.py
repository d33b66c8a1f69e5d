"""Stand-in for transformers' `utils/fetch_hub_objects_for_ci.py`: the image the shared tests load, made locally.

The shared image-processor tests load COCO's photo of two cats from the Hub; offline, `url_to_local_path` gives a real
photo of a cat from scikit-image instead. Other URLs (segmentation fixtures) are not used by ClusTR's tests.
"""

import os
import tempfile
from pathlib import Path

from PIL import Image
from skimage import data


COCO_CATS = "https://huggingface.co/datasets/hf-internal-testing/fixtures-coco/resolve/main/val2017/000000039769.jpg"


def url_to_local_path(url: str) -> str:
    if url != COCO_CATS:
        raise ValueError(f"No local stand-in for {url}; ClusTR's tests are offline (add one to {__file__}).")
    path = Path(tempfile.gettempdir()) / "clustr_hf_tests_chelsea.png"
    if not path.is_file():
        partial = path.with_name(f"{path.name}.{os.getpid()}.png")
        Image.fromarray(data.chelsea()).save(partial)
        os.replace(partial, path)  # whole, even with several test processes at once
    return str(path)
