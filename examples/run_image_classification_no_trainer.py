#!/usr/bin/env python
"""Train or fine-tune an image classifier (ClusTR by default) with accelerate: one process, several GPUs or machines.

Checkpoints every N steps can be resumed exactly; `--recipe imagenet` sets the training recipe of docs/algorithm.md
section 6. Examples (README.md, section Training, has more):

    python examples/run_image_classification_no_trainer.py --model_name_or_path b0 --dataset_name digits \
        --image_size 64 --output_dir outputs/digits
    torchrun --nproc_per_node 2 examples/run_image_classification_no_trainer.py ...   # 2 CPU processes (gloo)
    accelerate launch --multi_gpu examples/run_image_classification_no_trainer.py --recipe imagenet ...
"""

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import passive_openmp  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch loads OpenMP)

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import SchedulerType, get_scheduler

from clustr_hf import ClusTRForImageClassification
from clustr_hf.publishing import publish_run, write_run_card
from training_utils import (
    DataArguments,
    ImageCollator,
    ModelArguments,
    RecipeArguments,
    build_datasets,
    check_arguments,
    check_at_least_one,
    class_names,
    classification_loss,
    list_checkpoints,
    load_checkpoint,
    load_image_dataset,
    load_model_and_image_processor,
    load_top_k_accuracy,
    model_fingerprint,
    optimizer_parameter_groups,
    parse_arguments,
    refuse_incomplete,
    refuse_to_overwrite,
    resolve_checkpoint,
    run_record,
    save_checkpoint,
    save_example_images,
    scaled_learning_rate,
    scheduler_kwargs,
    top_k_predictions,
)


logger = get_logger(__name__)


@dataclass
class LoopArguments:
    """The training loop: batch sizes, optimisation, schedule, checkpoints, logging and output."""

    output_dir: str = field(metadata={"help": "Where the final model, checkpoints and logs go."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Training batch size per process."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Evaluation batch size per process."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimizer step."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate (before any batch scaling)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (not on biases and norms)."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    max_grad_norm: float = field(default=0.0, metadata={"help": "Clip gradients to this norm; 0 = no clipping."})
    num_train_epochs: float = field(default=3, metadata={"help": "Epochs to train (unless --max_train_steps)."})
    max_train_steps: int | None = field(default=None, metadata={"help": "Optimizer steps to train; overrides epochs."})
    lr_scheduler_type: str = field(
        default="linear",
        metadata={"help": "transformers' scheduler name.", "choices": [kind.value for kind in SchedulerType]},
    )
    num_warmup_steps: int = field(default=0, metadata={"help": "Warm-up steps (see also --warmup_epochs)."})
    mixed_precision: str | None = field(
        default=None,
        metadata={"help": "Autocast dtype: no, bf16 or fp16; default: accelerate's configuration (no without one).",
                  "choices": ["no", "bf16", "fp16"]},
    )
    seed: int = field(default=42, metadata={"help": "Seed of weights, data order and augmentation."})
    checkpointing_steps: str | None = field(
        default=None, metadata={"help": "Save a resumable checkpoint every N optimizer steps, or 'epoch'."}
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint folder, or 'latest' (in output_dir/checkpoints)."}
    )
    logging_steps: int = field(default=10, metadata={"help": "Log the mean training loss every N optimizer steps."})
    with_tracking: bool = field(default=False, metadata={"help": "Log to the trackers of --report_to."})
    report_to: str = field(default="tensorboard", metadata={"help": "accelerate tracker(s): tensorboard, all, ..."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "Data loading worker processes."})
    use_cpu: bool = field(default=False, metadata={"help": "Train on the CPU even if a GPU is available."})
    push_to_hub: bool = field(
        default=False, metadata={"help": "Upload the final folder to the Hub, assembled by clustr_hf.publishing (a "
                                         "ClusTR classifier only) beside output_dir as OUTPUT_DIR-hub."}
    )
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repository (default: output_dir's name)."})


def evaluate_model(accelerator, model, dataloader, metric) -> dict:
    """Validation loss, top-1 and top-5 accuracy over the whole validation set (gathered from all processes)."""
    model.eval()
    losses = []
    for batch in dataloader:
        with torch.no_grad():
            logits = model(pixel_values=batch["pixel_values"]).logits
        per_sample = torch.nn.functional.cross_entropy(logits.float(), batch["labels"], reduction="none")
        ranked, labels, per_sample = accelerator.gather_for_metrics(
            (top_k_predictions(logits), batch["labels"], per_sample)
        )
        metric.add_batch(predictions=ranked.cpu().numpy(), references=labels.cpu().numpy())
        losses.append(per_sample)
    results = {f"eval_{name}": value for name, value in metric.compute().items()}
    results["eval_loss"] = torch.cat(losses).mean().item()
    model.train()
    return results


def check_loop_arguments(loop_args: LoopArguments) -> None:
    """Fail early, naming the flag, on loop settings that would otherwise fail deep inside or be ignored."""
    check_at_least_one(
        per_device_train_batch_size=loop_args.per_device_train_batch_size,
        per_device_eval_batch_size=loop_args.per_device_eval_batch_size,
        gradient_accumulation_steps=loop_args.gradient_accumulation_steps, max_train_steps=loop_args.max_train_steps,
        logging_steps=loop_args.logging_steps,
    )
    if loop_args.num_train_epochs <= 0:
        raise ValueError(f"--num_train_epochs {loop_args.num_train_epochs} must be positive.")


def checkpoint_every(loop_args: LoopArguments) -> int | str | None:
    """`--checkpointing_steps` as a positive step count, 'epoch' or None."""
    value = loop_args.checkpointing_steps
    if value is None or value == "epoch":
        return value
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"--checkpointing_steps {value!r} must be a positive number of steps or 'epoch'.")
    return int(value)


def append_log(path: Path, entry: dict) -> None:
    with path.open("a") as file:
        file.write(json.dumps(entry) + "\n")


def log_length(path: Path) -> int:
    """The number of entries in the training log (0 before the first)."""
    return len(path.read_text().splitlines()) if path.exists() else 0


def main(argv=None) -> dict:
    """Train, evaluate each epoch, save the final Hub-ready folder; returns the final results (all_results.json)."""
    model_args, data_args, recipe_args, loop_args = parse_arguments(
        [ModelArguments, DataArguments, RecipeArguments, LoopArguments], argv
    )
    check_arguments(model_args, data_args, recipe_args)
    check_loop_arguments(loop_args)
    every = checkpoint_every(loop_args)
    output_dir = Path(loop_args.output_dir)
    checkpoints_dir = output_dir / "checkpoints"
    refuse_incomplete(checkpoints_dir)
    accelerator = Accelerator(
        # without a GPU or other accelerator, several processes (torchrun) form a gloo group only with cpu=True
        cpu=loop_args.use_cpu or not torch.accelerator.is_available(),
        gradient_accumulation_steps=loop_args.gradient_accumulation_steps,
        mixed_precision=loop_args.mixed_precision,
        log_with=loop_args.report_to if loop_args.with_tracking else None,
        project_dir=str(output_dir),
        step_scheduler_with_optimizer=False,
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(loop_args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    with accelerator.main_process_first():
        dataset = load_image_dataset(data_args, seed=loop_args.seed)
    labels = class_names(dataset, data_args.label_column_name)
    model, image_processor = load_model_and_image_processor(model_args, labels, recipe_args.drop_path_rate)
    publishable = isinstance(model, ClusTRForImageClassification)
    if loop_args.push_to_hub and not publishable:
        raise ValueError(f"--push_to_hub publishes ClusTR classifiers (with their model card), not a "
                         f"{type(model).__name__}; leave it out and upload {output_dir} yourself.")
    train_dataset, eval_dataset = build_datasets(dataset, image_processor, data_args, recipe_args, loop_args.seed)

    # Both read in order (the training set shuffles itself each epoch); their own generators keep the global one,
    # which drives dropout, untouched by the seed each data loader iterator draws.
    train_dataloader = DataLoader(
        train_dataset, batch_size=loop_args.per_device_train_batch_size,
        collate_fn=ImageCollator.for_training(len(labels), recipe_args),
        num_workers=loop_args.dataloader_num_workers, generator=torch.Generator().manual_seed(loop_args.seed),
    )
    eval_dataloader = DataLoader(
        eval_dataset, batch_size=loop_args.per_device_eval_batch_size, collate_fn=ImageCollator(len(labels)),
        num_workers=loop_args.dataloader_num_workers, generator=torch.Generator().manual_seed(loop_args.seed),
    )
    total_batch_size = (
        loop_args.per_device_train_batch_size * accelerator.num_processes * loop_args.gradient_accumulation_steps
    )
    learning_rate = scaled_learning_rate(loop_args.learning_rate, total_batch_size, recipe_args.lr_base_batch_size)
    optimizer = torch.optim.AdamW(
        optimizer_parameter_groups(model, loop_args.weight_decay), lr=learning_rate, eps=loop_args.adam_epsilon
    )
    model, optimizer, train_dataloader, eval_dataloader = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader
    )

    steps_per_epoch = math.ceil(len(train_dataloader) / loop_args.gradient_accumulation_steps)
    max_train_steps = loop_args.max_train_steps or math.ceil(loop_args.num_train_epochs * steps_per_epoch)
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    num_warmup_steps = (
        round(recipe_args.warmup_epochs * steps_per_epoch) if recipe_args.warmup_epochs is not None
        else loop_args.num_warmup_steps
    )
    lr_scheduler = accelerator.prepare(get_scheduler(
        loop_args.lr_scheduler_type, optimizer, num_warmup_steps=num_warmup_steps, num_training_steps=max_train_steps,
        scheduler_specific_kwargs=scheduler_kwargs(loop_args.lr_scheduler_type, learning_rate, recipe_args),
    ))

    signature = {
        "model": model_fingerprint(accelerator.unwrap_model(model)),
        "num_train_samples": len(train_dataset),
        "num_processes": accelerator.num_processes,
        "per_device_train_batch_size": loop_args.per_device_train_batch_size,
        "gradient_accumulation_steps": loop_args.gradient_accumulation_steps,
        "repeated_augmentations": recipe_args.repeated_augmentations,
        "max_train_steps": max_train_steps,
        "seed": loop_args.seed,
    }
    global_step, start_epoch, skip_batches, log_entries = 0, 0, 0, 0
    results = {}  # the latest evaluation
    # this process's summed micro-batch losses and micro-batches since the last logged loss; checkpointed, so that a
    # resumed run logs the losses an uninterrupted one does
    running = torch.zeros(2, device=accelerator.device)
    if loop_args.resume_from_checkpoint is not None:
        folder = resolve_checkpoint(loop_args.resume_from_checkpoint, checkpoints_dir)
        state = load_checkpoint(accelerator, folder, signature)
        global_step, start_epoch, skip_batches = state["step"], state["epoch"], state["batches_in_epoch"]
        log_entries, results = state["log_entries"], state["results"]
        if "running_loss" in state:
            running = torch.tensor(state["running_loss"][accelerator.process_index], device=accelerator.device)
        else:
            logger.warning(f"{folder} was saved without the running loss (an older clustr_hf); the first loss logged "
                           f"after resuming averages only the steps run since.")
        logger.info(f"Resumed from {folder}: step {global_step}, epoch {start_epoch}, batch {skip_batches}")
    refuse_to_overwrite(list_checkpoints(checkpoints_dir), global_step)
    log_path = output_dir / "train_log.jsonl"
    if accelerator.is_main_process and log_path.exists():  # what was logged after the checkpoint is logged again
        kept = log_path.read_text().splitlines()[:log_entries]
        log_path.write_text("".join(line + "\n" for line in kept))

    if loop_args.with_tracking:
        hyperparameters = {
            key: value for key, value in {**asdict(loop_args), **asdict(recipe_args), **asdict(model_args)}.items()
            if isinstance(value, (int, float, str, bool))
        }
        accelerator.init_trackers("tensorboard", config=hyperparameters)
    metric = load_top_k_accuracy()

    logger.info(
        f"{len(train_dataset)} training / {len(eval_dataset)} validation images, {len(labels)} classes; "
        f"{accelerator.num_processes} process(es) x {loop_args.per_device_train_batch_size} images x "
        f"{loop_args.gradient_accumulation_steps} accumulation = {total_batch_size} per step; {max_train_steps} steps "
        f"over {num_epochs} epoch(s), learning rate {learning_rate:g}"
    )

    def checkpoint(epoch: int, batches_in_epoch: int) -> None:
        """Save a checkpoint of the state after `global_step`, resuming at that batch of that epoch."""
        save_checkpoint(accelerator, checkpoints_dir, global_step, {
            "step": global_step, "epoch": epoch, "batches_in_epoch": batches_in_epoch, "run": signature,
            "log_entries": log_length(log_path), "results": results,
            "running_loss": accelerator.gather(running).view(-1, 2).tolist(),
        })

    progress = tqdm(total=max_train_steps, initial=global_step, disable=not accelerator.is_local_main_process,
                    desc="training")
    with logging_redirect_tqdm():  # log lines go above the progress bar, not onto its line
        model.train()
        for epoch in range(start_epoch, num_epochs):
            train_dataloader.set_epoch(epoch)  # passed on to the training set at every iteration
            batches_in_epoch = skip_batches if epoch == start_epoch else 0
            if global_step >= max_train_steps:  # resumed from the last step's checkpoint: only the evaluation is left
                epoch_dataloader = []
            elif batches_in_epoch:
                epoch_dataloader = accelerator.skip_first_batches(train_dataloader, batches_in_epoch)
            else:
                epoch_dataloader = train_dataloader
            epoch_start, epoch_cpu_start, epoch_samples = time.perf_counter(), time.process_time(), 0
            for batch in epoch_dataloader:
                with accelerator.accumulate(model):
                    logits = model(pixel_values=batch["pixel_values"]).logits
                    loss = classification_loss(logits, batch["labels"], recipe_args.label_smoothing)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and loop_args.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), loop_args.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad()
                batches_in_epoch += 1
                epoch_samples += len(batch["labels"])
                running += torch.stack([loss.detach().float(), torch.ones((), device=loss.device)])
                if not accelerator.sync_gradients:
                    continue
                learning_rate_of_step = lr_scheduler.get_last_lr()[0]
                lr_scheduler.step()
                global_step += 1
                progress.update(1)
                if global_step % loop_args.logging_steps == 0 or global_step == max_train_steps:
                    loss_sum, count = accelerator.reduce(running, reduction="sum").tolist()
                    entry = {"step": global_step, "epoch": epoch, "loss": loss_sum / count,
                             "learning_rate": learning_rate_of_step}
                    running.zero_()
                    progress.set_postfix(loss=f"{entry['loss']:.4f}")
                    if accelerator.is_main_process:
                        append_log(log_path, entry)
                    if loop_args.with_tracking:
                        accelerator.log({"train/loss": entry["loss"], "train/learning_rate": entry["learning_rate"]},
                                        step=global_step)
                epoch_done = batches_in_epoch == len(train_dataloader)
                if isinstance(every, int) and global_step % every == 0 and not epoch_done:
                    checkpoint(epoch, batches_in_epoch)
                if global_step >= max_train_steps:
                    break
            samples, cpu_time = accelerator.reduce(
                torch.tensor([epoch_samples, time.process_time() - epoch_cpu_start], dtype=torch.float64,
                             device=accelerator.device),
                reduction="sum",
            ).tolist()
            timing = {"train_runtime": time.perf_counter() - epoch_start, "train_cpu_time": cpu_time,
                      "train_samples": int(samples)}

            results = evaluate_model(accelerator, model, eval_dataloader, metric)
            logger.info(f"epoch {epoch}: " + ", ".join(f"{name} {value:.4f}" for name, value in results.items()))
            if accelerator.is_main_process:
                append_log(log_path, {"step": global_step, "epoch": epoch, **results, **timing})
            if loop_args.with_tracking:
                accelerator.log({name.replace("eval_", "eval/"): value for name, value in results.items()},
                                step=global_step)
            # a checkpoint at the end of an epoch comes after its evaluation, so that a resumed run lacks none
            if batches_in_epoch == len(train_dataloader) and (
                every == "epoch" or isinstance(every, int) and global_step % every == 0
            ):
                checkpoint(epoch + 1, 0)
            if global_step >= max_train_steps:
                break
    progress.close()

    accelerator.wait_for_everyone()
    accelerator.unwrap_model(model).save_pretrained(
        output_dir, is_main_process=accelerator.is_main_process, save_function=accelerator.save
    )
    results.update(train_steps=global_step, total_train_batch_size=total_batch_size,
                   num_processes=accelerator.num_processes, learning_rate=learning_rate)
    results.update(run_record(
        model_args, data_args, recipe_args, dataset, accelerator.unwrap_model(model).config, image_processor,
        learning_rate=learning_rate, lr_scheduler_type=loop_args.lr_scheduler_type,
        per_device_train_batch_size=loop_args.per_device_train_batch_size,
        gradient_accumulation_steps=loop_args.gradient_accumulation_steps, total_train_batch_size=total_batch_size,
        num_train_epochs=num_epochs, max_steps=max_train_steps, weight_decay=loop_args.weight_decay,
        warmup_steps=num_warmup_steps, max_grad_norm=loop_args.max_grad_norm, seed=loop_args.seed,
    ))
    if accelerator.is_main_process:
        image_processor.save_pretrained(output_dir)
        results["example_images"] = save_example_images(dataset["validation"], output_dir, labels,
                                                        data_args.image_column_name, data_args.label_column_name)
        (output_dir / "all_results.json").write_text(json.dumps(results, indent=2))
        repo_id = loop_args.hub_model_id or f"<your-namespace>/{output_dir.resolve().name}"
        if publishable:
            write_run_card(output_dir, repo_id)
        if loop_args.push_to_hub:
            publish_run(output_dir, loop_args.hub_model_id or output_dir.resolve().name, token=model_args.token)
    accelerator.end_training()
    return results


if __name__ == "__main__":
    main()
