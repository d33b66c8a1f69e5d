#!/usr/bin/env python
"""`make demo`: train ClusTR-b0 from scratch on scikit-learn's handwritten digits upsampled to 64x64, on CPU.

Trains with the accelerate script (the same code as any other run), prints the validation top-1 accuracy, saves a
Hub-ready folder (model.safetensors, config.json, preprocessor_config.json) and classifies a few held-out digits
through `pipeline("image-classification")` loaded from that folder.
"""

import argparse
import time

import passive_openmp  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads OpenMP)

from transformers import pipeline

import run_image_classification_no_trainer  # beside this script, as its training_utils
from training_utils import load_digits_dataset  # importing clustr_hf registers ClusTR


def training_flags(output_dir: str, epochs: int, image_size: int) -> list[str]:
    """The demo's run: b0 from scratch, AdamW with a cosine schedule, label smoothing, mild digit-safe augmentation
    (crops keep most of the digit; no flips, which would turn digits into other shapes)."""
    return [
        "--model_name_or_path", "b0", "--dataset_name", "digits", "--image_size", str(image_size),
        "--output_dir", output_dir, "--num_train_epochs", str(epochs),
        "--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "120",
        "--learning_rate", "2e-3", "--weight_decay", "0.05",
        "--lr_scheduler_type", "cosine_warmup_with_min_lr", "--warmup_epochs", "1", "--min_learning_rate", "1e-5",
        "--warmup_start_learning_rate", "1e-5",
        "--label_smoothing", "0.1", "--crop_scale_min", "0.6", "--horizontal_flip_prob", "0",
        "--drop_path_rate", "0.0", "--logging_steps", "5", "--with_tracking", "--report_to", "tensorboard",
        "--seed", "0",
    ]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", "--output-dir", default="outputs/demo",
                        help="Where the Hub-ready folder is written.")
    parser.add_argument("--epochs", type=int, default=10, help="Training epochs over the 1437 training digits.")
    parser.add_argument("--image_size", type=int, default=64, help="Side of the upsampled digits.")
    parser.add_argument("--num_examples", type=int, default=6, help="Held-out digits shown through the pipeline.")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)

    start = time.perf_counter()
    results = run_image_classification_no_trainer.main(training_flags(args.output_dir, args.epochs, args.image_size))
    minutes = (time.perf_counter() - start) / 60
    print(f"\nTrained ClusTR-b0 on digits at {args.image_size}x{args.image_size} in {minutes:.1f} min: "
          f"validation top-1 {results['eval_accuracy']:.2%}, top-5 {results['eval_top5_accuracy']:.2%} "
          f"({results['train_steps']} steps of {results['total_train_batch_size']} images).")
    print(f"Hub-ready folder: {args.output_dir} (TensorBoard: tensorboard --logdir {args.output_dir}/tensorboard)")

    classifier = pipeline("image-classification", model=args.output_dir)
    held_out = load_digits_dataset()["validation"].select(range(args.num_examples))
    predictions = classifier([example["image"] for example in held_out], top_k=1)  # 8x8 greyscale PIL images
    print("\nHeld-out digits through pipeline('image-classification'):")
    for example, prediction in zip(held_out, predictions):
        print(f"  true {example['label']}  predicted {prediction[0]['label']}  (score {prediction[0]['score']:.3f})")
    print(f"\nTry it in the browser: make app (python examples/app.py --model {args.output_dir})")
    return results


if __name__ == "__main__":
    main()
