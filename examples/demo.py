"""`make demo`: run an UNTRAINED ClusTR-b0 on real photos and show what its clustering attention does.

No trained weights exist yet (the training issue replaces this with a real training run), so the class scores
are meaningless; the shapes, cluster counts and timing are real.
"""

import time

import torch
from skimage import data
from torchvision.transforms import v2

from clustr_hf import ClusTRConfig, ClusTRForImageClassification


PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
PREPROCESS = v2.Compose([
    v2.ToImage(), v2.Resize(256, interpolation=v2.InterpolationMode.BICUBIC), v2.CenterCrop(224),
    v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
])


def main():
    torch.manual_seed(0)
    model = ClusTRForImageClassification(ClusTRConfig.from_variant("b0", num_labels=10)).eval()
    pixel_values = torch.stack([PREPROCESS(getattr(data, name)()[..., :3]) for name in PHOTOS])
    start = time.perf_counter()
    with torch.inference_mode():
        outputs = model.clustr(pixel_values, output_cluster_assignments=True)
        logits = model.classifier(outputs.pooler_output)
    elapsed = time.perf_counter() - start
    print(f"ClusTR-b0, {sum(p.numel() for p in model.parameters()):,} parameters, UNTRAINED (random weights): "
          f"the class scores below are meaningless.")
    print(f"Forward pass of {len(PHOTOS)} real photos at 224x224 on CPU: {elapsed:.2f} s")
    for name, probabilities in zip(PHOTOS, logits.softmax(-1)):
        top = probabilities.topk(3)
        print(f"  {name:10s} top-3 classes {top.indices.tolist()} with p={[round(p, 3) for p in top.values.tolist()]}")
    for block, assignments in enumerate(outputs.cluster_assignments):
        counts = [int(scale.max()) + 1 for scale in assignments[0]]
        print(f"  clustered block {block}: {assignments.shape[-1]} tokens -> {counts[0]} coarse / {counts[1]} fine "
              f"clusters (image 0)")


if __name__ == "__main__":
    main()
