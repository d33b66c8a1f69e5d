#!/usr/bin/env python
r"""Fine-tune or train an image classifier (ClusTR by default) with transformers' Trainer.

Takes every TrainingArguments flag (`--eval_strategy`, `--save_steps`, `--report_to`, ...) plus the data, model and
recipe flags shared with the accelerate script; `--recipe imagenet` sets docs/algorithm.md section 6. The output folder
gets clustr_hf's model card (README.md); `--push_to_hub` uploads the final folder once, at the end, assembled by
clustr_hf.publishing (card, cleaned results, handler) as OUTPUT_DIR-hub.
Checkpoints are Trainer's own (`--save_strategy steps --save_steps N`); `--resume_from_checkpoint latest` (or a
checkpoint folder) resumes a stopped run to the weights an uninterrupted run ends with.

    python examples/run_image_classification.py --model_name_or_path outputs/demo --dataset_name fashion_mnist \
        --ignore_mismatched_sizes --output_dir outputs/fashion --num_train_epochs 3 --eval_strategy epoch
"""

import json
import logging
import math
from pathlib import Path

import passive_openmp  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads OpenMP)

import numpy as np
import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from clustr_hf import ClusTRForImageClassification
from clustr_hf.publishing import publish_run, write_run_card
from training_utils import (
    SCHEDULER_KWARGS_FLAGS,
    CheckpointError,
    DataArguments,
    ImageCollator,
    ModelArguments,
    RecipeArguments,
    build_datasets,
    check_arguments,
    check_at_least_one,
    class_names,
    classification_loss,
    disk_full,
    disk_full_error,
    explicit_flags,
    incomplete_checkpoints,
    list_checkpoints,
    load_image_dataset,
    load_model_and_image_processor,
    load_top_k_accuracy,
    parse_arguments,
    refuse_to_overwrite,
    resolve_checkpoint,
    run_record,
    save_example_images,
    scaled_learning_rate,
    scheduler_kwargs,
    top_k_predictions,
)


logger = logging.getLogger(__name__)

TRAINER_CHECKPOINTS = (f"{PREFIX_CHECKPOINT_DIR}-", TRAINER_STATE_NAME)
"""Name prefix and completion marker of Trainer's checkpoints (Trainer writes trainer_state.json last)."""


REQUIRED_SETTINGS = {
    "train_sampling_strategy": ("sequential", "the training set shuffles itself each epoch (in the same order when "
                                              "resumed), which another sampler would undo"),
    "remove_unused_columns": (False, "Trainer would drop the image column, which the model's forward does not take, "
                                     "before the collator turns it into pixel_values"),
}
"""TrainingArguments this script sets, and why; a flag asking for another value is an error."""


def check_trainer_arguments(training_args: TrainingArguments, given: set[str]) -> None:
    """Fail early, naming the flag, on Trainer settings that would otherwise fail deep inside or be ignored, and on
    flags (`given`: those on the command line) that ask for what this script cannot do or set one thing twice."""
    for name, (required, reason) in REQUIRED_SETTINGS.items():
        if name in given and getattr(training_args, name) != required:
            raise ValueError(f"--{name} {getattr(training_args, name)} does not work with this script: {reason}. "
                             f"Leave it out (the script sets {required}).")
    if {"warmup_steps", "warmup_epochs"} <= given:
        raise ValueError("--warmup_steps and --warmup_epochs both set the warm-up length; give one of them.")
    for key, flag in SCHEDULER_KWARGS_FLAGS.items():
        if flag in given and key in (training_args.lr_scheduler_kwargs or {}):
            raise ValueError(f"--lr_scheduler_kwargs sets {key} and --{flag} sets it too; give one of them.")
    check_at_least_one(
        per_device_train_batch_size=training_args.per_device_train_batch_size,
        per_device_eval_batch_size=training_args.per_device_eval_batch_size,
        gradient_accumulation_steps=training_args.gradient_accumulation_steps,
    )
    if training_args.max_steps == 0:
        raise ValueError("--max_steps 0 would train nothing: give a positive number of steps, or leave it out to "
                         "train for --num_train_epochs.")
    if training_args.dataloader_persistent_workers and training_args.dataloader_num_workers > 0:
        raise ValueError("--dataloader_persistent_workers keeps each worker's copy of the training set, which then "
                         "misses the new order of every epoch after the first; leave it off.")


def checkpoint_to_resume(training_args: TrainingArguments) -> str | None:
    """The checkpoint `--resume_from_checkpoint` names (a folder, or 'latest': the newest complete one in output_dir),
    checked so that Trainer can resume it exactly; None for a fresh start. Refuses to write over complete checkpoints
    and to resume from one whose state or random states are missing or corrupt."""
    output_dir = training_args.output_dir
    complete = list_checkpoints(output_dir, *TRAINER_CHECKPOINTS)
    if training_args.resume_from_checkpoint is None:
        refuse_to_overwrite(complete, 0)
        return None
    folder = resolve_checkpoint(training_args.resume_from_checkpoint, output_dir, *TRAINER_CHECKPOINTS)
    others = ", ".join(str(path) for _, path in complete if path != folder) or "none"
    state_file = folder / TRAINER_STATE_NAME
    try:
        step = json.loads(state_file.read_text())["global_step"]
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"{state_file} is corrupt ({type(error).__name__}: {error}); resume from another checkpoint ({others}) or "
            f"delete this one."
        ) from error
    random_states = (f"rng_state_{training_args.process_index}.pth" if training_args.world_size > 1
                     else "rng_state.pth")
    if not (folder / random_states).is_file():
        raise CheckpointError(
            f"Checkpoint {folder} lacks {random_states}: resumed without its random states, the run would not end "
            f"where an uninterrupted one does. Resume from another checkpoint ({others}) or start again."
        )
    refuse_to_overwrite(complete, step)
    for path in incomplete_checkpoints(output_dir, *TRAINER_CHECKPOINTS):
        logger.warning(f"{path} was left incomplete by a stopped run (no {TRAINER_STATE_NAME}); it is written again.")
    return str(folder)


def fill_in_settings(training_args: TrainingArguments, recipe_args: RecipeArguments, given: set[str],
                     train_samples: int) -> None:
    """Set what the recipe flags mean in TrainingArguments (scheduler keywords, warm-up steps from --warmup_epochs),
    what the script needs (REQUIRED_SETTINGS) and no memory pinning without an accelerator, leaving the flags
    `given` on the command line as they are."""
    training_args.lr_scheduler_kwargs = {
        **scheduler_kwargs(training_args.lr_scheduler_type, training_args.learning_rate, recipe_args),
        **(training_args.lr_scheduler_kwargs or {}),
    }
    if recipe_args.warmup_epochs is not None and "warmup_steps" not in given:
        batches_per_process = math.ceil(
            math.ceil(train_samples / training_args.per_device_train_batch_size) / training_args.world_size
        )
        steps_per_epoch = math.ceil(batches_per_process / training_args.gradient_accumulation_steps)
        training_args.warmup_steps = round(recipe_args.warmup_epochs * steps_per_epoch)
    for name, (required, _) in REQUIRED_SETTINGS.items():
        setattr(training_args, name, required)
    if "dataloader_pin_memory" not in given and (training_args.use_cpu or not torch.accelerator.is_available()):
        training_args.dataloader_pin_memory = False  # nothing to pin memory for; torch warns on every data loader


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
    """Train, evaluate and save the final Hub-ready folder (model, image processor, metrics, all_results.json with
    what the run was); returns all_results."""
    dataclass_types = [ModelArguments, DataArguments, RecipeArguments, TrainingArguments]
    model_args, data_args, recipe_args, training_args = parse_arguments(dataclass_types, argv)
    given = explicit_flags(dataclass_types, argv)
    check_arguments(model_args, data_args, recipe_args)
    check_trainer_arguments(training_args, given)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if training_args.should_log else logging.WARNING)
    resume = checkpoint_to_resume(training_args) if training_args.do_train else None

    with training_args.main_process_first():
        dataset = load_image_dataset(data_args, seed=training_args.seed)
    labels = class_names(dataset, data_args.label_column_name)
    model, image_processor = load_model_and_image_processor(model_args, labels, recipe_args.drop_path_rate)
    publishable = isinstance(model, ClusTRForImageClassification)
    push_to_hub, training_args.push_to_hub = training_args.push_to_hub, False  # published once at the end, below
    if push_to_hub and not publishable:
        raise ValueError(f"--push_to_hub publishes ClusTR classifiers (with their model card), not a "
                         f"{type(model).__name__}; leave it out and upload {training_args.output_dir} yourself.")
    train_dataset, eval_dataset = build_datasets(dataset, image_processor, data_args, recipe_args, training_args.seed)

    total_batch_size = (
        training_args.per_device_train_batch_size * training_args.world_size * training_args.gradient_accumulation_steps
    )
    training_args.learning_rate = scaled_learning_rate(
        training_args.learning_rate, total_batch_size, recipe_args.lr_base_batch_size
    )
    fill_in_settings(training_args, recipe_args, given, len(train_dataset))

    metric = load_top_k_accuracy()
    trainer = Trainer(
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
    )
    metrics = {}
    if training_args.do_train:
        try:
            result = trainer.train(resume_from_checkpoint=resume)
            trainer.save_model()
        except Exception as error:
            if not disk_full(error, training_args.output_dir):
                raise
            raise disk_full_error(error, training_args.output_dir, "a checkpoint or the model") from error
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
        metrics.update(result.metrics)
    if training_args.do_eval:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)

    record = run_record(
        model_args, data_args, recipe_args, dataset, model.config, image_processor,
        learning_rate=training_args.learning_rate, lr_scheduler_type=str(training_args.lr_scheduler_type.value),
        per_device_train_batch_size=training_args.per_device_train_batch_size,
        gradient_accumulation_steps=training_args.gradient_accumulation_steps, total_train_batch_size=total_batch_size,
        num_train_epochs=trainer.state.num_train_epochs, max_steps=trainer.state.max_steps,
        weight_decay=training_args.weight_decay, warmup_steps=training_args.warmup_steps,
        max_grad_norm=training_args.max_grad_norm, seed=training_args.seed,
    )
    metrics.update(record)
    if trainer.is_world_process_zero():
        output_dir = Path(training_args.output_dir)
        metrics["example_images"] = save_example_images(dataset["validation"], output_dir, labels,
                                                        data_args.image_column_name, data_args.label_column_name)
        (output_dir / "all_results.json").write_text(json.dumps(metrics, indent=2))
        if publishable:
            write_run_card(output_dir, training_args.hub_model_id or f"<your-namespace>/{output_dir.resolve().name}")
        if push_to_hub:
            publish_run(output_dir, training_args.hub_model_id or output_dir.resolve().name,
                        private=bool(training_args.hub_private_repo), revision=training_args.hub_revision,
                        token=training_args.hub_token)
    return metrics


if __name__ == "__main__":
    main()
