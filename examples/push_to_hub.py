"""Publish a ClusTR classifier on the Hugging Face Hub in one command, optionally with a Gradio Space that runs it.

    python examples/push_to_hub.py SOURCE --repo-id you/clustr-b2 --output-dir hub/clustr-b2 [--dry-run]
    python examples/push_to_hub.py SOURCE --repo-id you/clustr-b2 --output-dir hub/clustr-b2 --space you/clustr-b2-demo

SOURCE is a trained folder (model + image processor saved with save_pretrained, optionally all_results.json), a folder
converted with `python -m clustr_hf.convert_reference_checkpoint`, or a reference .pth file. The Hub folder is written
to --output-dir (kept after the upload) and uploaded with huggingface_hub; the token comes from HF_TOKEN or
`hf auth login`. --space also writes a Space folder (--space-dir, default: --output-dir with "-space") that runs
examples/app.py on the model repository, and uploads it after the model. --dry-run writes the folders only;
--upload-only uploads a folder written before (SOURCE: the Hub folder, or the Space folder with --space), e.g. after a
failed upload. Every flag is also accepted with underscores (--output_dir, --repo_id, ...), as the training scripts
spell theirs.
"""

import argparse
import sys
from pathlib import Path

from clustr_hf.configuration_clustr import VARIANTS
from clustr_hf.publishing import (
    PublishError,
    assemble_hub_folder,
    assemble_space_folder,
    require_new_folder,
    upload_hub_folder,
    upload_space_folder,
)


APP_PATH = Path(__file__).with_name("app.py")


def flag(name: str) -> tuple[str, str]:
    """A flag and its underscore spelling: ("--output-dir", "--output_dir")."""
    return name, "--" + name[2:].replace("-", "_")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="trained or converted model folder, or a reference .pth file")
    parser.add_argument(*flag("--repo-id"), dest="repo_id", required=True,
                        help="Hub repository, e.g. your-name/clustr-b2")
    parser.add_argument(*flag("--output-dir"), dest="output_dir", type=Path,
                        help="new or empty folder for the Hub files (required unless --upload-only)")
    parser.add_argument("--dataset", help="Hub id of the dataset the weights were evaluated on, for folders whose "
                                          "results file does not record it, e.g. ILSVRC/imagenet-1k")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="for a .pth SOURCE: checked against its shapes")
    parser.add_argument("--space", help="also publish a Gradio Space that runs the model, e.g. your-name/clustr-demo")
    parser.add_argument(*flag("--space-dir"), dest="space_dir", type=Path,
                        help="new or empty folder for the Space files (default: OUTPUT_DIR-space)")
    parser.add_argument(*flag("--dry-run"), dest="dry_run", action="store_true",
                        help="write the folders only, do not upload")
    parser.add_argument(*flag("--upload-only"), dest="upload_only", action="store_true",
                        help="SOURCE is a Hub folder (or with --space, a Space folder) written before: upload it")
    parser.add_argument("--private", action="store_true", help="create the repository (and Space) as private")
    parser.add_argument("--revision", help="branch of the model repository to upload to (created if missing; "
                                           "default main)")
    parser.add_argument(*flag("--commit-message"), dest="commit_message", help="commit message of the model upload")
    args = parser.parse_args(argv)
    if args.upload_only == (args.output_dir is not None) or args.upload_only and args.dry_run:
        parser.error("give --output-dir to assemble (and upload unless --dry-run), or --upload-only alone")
    if args.space_dir and not args.space:
        parser.error("--space-dir needs --space (the Space's Hub id)")
    if args.space and args.output_dir:
        args.space_dir = args.space_dir or args.output_dir.with_name(f"{args.output_dir.name}-space")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.upload_only:
            folder = space_folder = args.source
        else:
            if args.space:
                require_new_folder(args.space_dir)  # before the model's folder is written
            folder = assemble_hub_folder(args.source, args.output_dir, repo_id=args.repo_id, dataset=args.dataset,
                                         variant=args.variant, space_id=args.space)
            print(f"Wrote the Hub folder {folder}: {', '.join(sorted(path.name for path in folder.iterdir()))}")
            if args.space:
                space_folder = assemble_space_folder(APP_PATH, args.space_dir, space_id=args.space,
                                                     repo_id=args.repo_id)
                print(f"Wrote the Space folder {space_folder}: "
                      f"{', '.join(sorted(path.name for path in space_folder.iterdir()))}")
    except (OSError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    try:
        if not (args.upload_only and args.space):
            commit = upload_hub_folder(folder, args.repo_id, private=args.private, revision=args.revision,
                                       commit_message=args.commit_message)
            print(f"Uploaded: {commit.commit_url}")
        if args.space:
            commit = upload_space_folder(space_folder, args.space, repo_id=args.repo_id, private=args.private)
            print(f"Uploaded the Space: {commit.commit_url}")
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except PublishError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
