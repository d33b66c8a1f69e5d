#!/usr/bin/env python
"""Fine-tune or train an image classifier (ClusTR by default) with transformers' Trainer.

Takes every TrainingArguments flag (`--eval_strategy`, `--save_steps`, `--report_to`, `--push_to_hub`, ...) plus the
data, model and recipe flags shared with the accelerate script; `--recipe imagenet` sets ALGORITHM.md section 6.

    python examples/run_image_classification.py --model_name_or_path outputs/demo --dataset_name fashion_mnist \
        --ignore_mismatched_sizes --output_dir outputs/fashion --num_train_epochs 3 --eval_strategy epoch
"""

import json
import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import SaveStrategy

from clustr_hf import VARIANTS
from training_utils import (
    TRAINER_CHECKPOINTS,
    DataArguments,
    EpochSampler,
    ImageCollator,
    ModelArguments,
    RecipeArguments,
    build_datasets,
    class_names,
    classification_loss,
    list_checkpoints,
    load_image_dataset,
    load_model_and_image_processor,
    load_top_k_accuracy,
    parse_arguments,
    refuse_to_overwrite,
    resolve_checkpoint,
    scaled_learning_rate,
    scheduler_kwargs,
    top_k_predictions,
)


logger = logging.getLogger(__name__)


@dataclass
class CheckpointArguments:
    checkpointing_steps: int | None = field(
        default=None,
        metadata={"help": "Save a checkpoint every N steps (same as --save_strategy steps --save_steps N)."},
    )


class ImageClassificationTrainer(Trainer):
    """Trainer that draws training batches from an `EpochSampler` (per-sample augmentation seeds, repeated
    augmentation)."""

    def __init__(self, *args, train_sampler: EpochSampler, **kwargs):
        super().__init__(*args, **kwargs)
        self.train_sampler = train_sampler

    def _get_train_sampler(self, train_dataset=None):
        return self.train_sampler


def make_loss_function(label_smoothing: float):
    """Trainer's `compute_loss_func`: label-smoothed cross-entropy on class indices or Mixup/CutMix soft targets.

    Trainer counts `num_items_in_batch` as label entries, which for soft targets is samples x classes; the loss is
    normalised per sample.
    """

    def compute_loss(outputs, labels, num_items_in_batch=None):
        num_samples = None if num_items_in_batch is None else num_items_in_batch / labels[0].numel()
        return classification_loss(outputs.logits, labels, label_smoothing, num_samples)

    return compute_loss


def main(argv=None) -> dict:
    """Train, evaluate and save the final Hub-ready folder (model, image processor, metrics); returns the metrics."""
    model_args, data_args, recipe_args, checkpoint_args, training_args = parse_arguments(
        [ModelArguments, DataArguments, RecipeArguments, CheckpointArguments, TrainingArguments], argv
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if training_args.should_log else logging.WARNING)

    with training_args.main_process_first():
        dataset = load_image_dataset(data_args, seed=training_args.seed)
    labels = class_names(dataset, data_args.label_column_name)
    model, image_processor = load_model_and_image_processor(model_args, labels, recipe_args.drop_path_rate)
    train_dataset, eval_dataset = build_datasets(dataset, image_processor, data_args, recipe_args)

    total_batch_size = (
        training_args.per_device_train_batch_size * training_args.world_size * training_args.gradient_accumulation_steps
    )
    training_args.learning_rate = scaled_learning_rate(
        training_args.learning_rate, total_batch_size, recipe_args.lr_base_batch_size
    )
    training_args.lr_scheduler_kwargs = {
        **(training_args.lr_scheduler_kwargs or {}),
        **scheduler_kwargs(training_args.lr_scheduler_type, training_args.learning_rate, recipe_args),
    }
    if recipe_args.warmup_epochs is not None:
        batches_per_process = math.ceil(
            math.ceil(len(train_dataset) / training_args.per_device_train_batch_size) / training_args.world_size
        )
        steps_per_epoch = math.ceil(batches_per_process / training_args.gradient_accumulation_steps)
        training_args.warmup_steps = round(recipe_args.warmup_epochs * steps_per_epoch)
    if checkpoint_args.checkpointing_steps is not None:
        training_args.save_strategy = SaveStrategy.STEPS
        training_args.save_steps = checkpoint_args.checkpointing_steps
    training_args.remove_unused_columns = False

    metric = load_top_k_accuracy()
    trainer = ImageClassificationTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset if training_args.do_eval else None,
        data_collator=ImageCollator.for_training(len(labels), recipe_args),
        processing_class=image_processor,
        compute_loss_func=make_loss_function(recipe_args.label_smoothing),
        preprocess_logits_for_metrics=lambda logits, _: top_k_predictions(logits),
        compute_metrics=lambda prediction: metric.compute(
            predictions=prediction.predictions, references=np.asarray(prediction.label_ids)
        ),
        train_sampler=EpochSampler(len(train_dataset), training_args.seed, recipe_args.repeated_augmentations),
    )
    metrics = {}
    if training_args.do_train:
        resume, start_step = training_args.resume_from_checkpoint, 0
        if resume is not None:
            resume = resolve_checkpoint(resume, training_args.output_dir, *TRAINER_CHECKPOINTS)
            start_step = json.loads((resume / TRAINER_CHECKPOINTS[1]).read_text())["global_step"]
        refuse_to_overwrite(list_checkpoints(training_args.output_dir, *TRAINER_CHECKPOINTS), start_step)
        result = trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
        trainer.save_model()
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
        metrics.update(result.metrics)
    if training_args.do_eval:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)

    from_scratch = model_args.model_name_or_path in VARIANTS and not os.path.isdir(model_args.model_name_or_path)
    card = {
        "finetuned_from": None if from_scratch else model_args.model_name_or_path,
        "tasks": "image-classification",
        "dataset": data_args.dataset_name or data_args.train_dir or "digits",
        "tags": ["image-classification", "vision", "clustr"],
    }
    if training_args.push_to_hub:
        trainer.push_to_hub(**card)
    elif trainer.is_world_process_zero():
        trainer.create_model_card(**card)
    return metrics


if __name__ == "__main__":
    main()
