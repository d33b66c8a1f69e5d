"""Publish a ClusTR classifier on the Hugging Face Hub in one command.

    python examples/push_to_hub.py SOURCE --repo-id you/clustr-b2 --output-dir hub/clustr-b2 [--dry-run]

SOURCE is a trained folder (model + image processor saved with save_pretrained, optionally all_results.json), a folder
converted with `python -m clustr_hf.convert_reference_checkpoint`, or a reference .pth file. The Hub folder is written
to --output-dir (kept after the upload) and uploaded with huggingface_hub; the token comes from HF_TOKEN or
`hf auth login`. --dry-run writes the folder only; --upload-only uploads a folder written before (SOURCE), e.g. after
a failed upload.
"""

import argparse
import sys
from pathlib import Path

from clustr_hf.configuration_clustr import VARIANTS
from clustr_hf.publishing import PublishError, assemble_hub_folder, upload_hub_folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="trained or converted model folder, or a reference .pth file")
    parser.add_argument("--repo-id", required=True, help="Hub repository, e.g. your-name/clustr-b2")
    parser.add_argument("--output-dir", type=Path, help="new or empty folder for the Hub files (required unless "
                                                        "--upload-only)")
    parser.add_argument("--dataset", help="Hub id of the dataset the weights were trained and evaluated on "
                                          "(required when SOURCE holds measured results), e.g. ILSVRC/imagenet-1k")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="for a .pth SOURCE: checked against its shapes")
    parser.add_argument("--dry-run", action="store_true", help="write the folder only, do not upload")
    parser.add_argument("--upload-only", action="store_true", help="SOURCE is a Hub folder written before: upload it")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", help="branch to upload to (created if missing; default main)")
    parser.add_argument("--commit-message", help="commit message of the upload")
    args = parser.parse_args(argv)
    if args.upload_only == (args.output_dir is not None) or args.upload_only and args.dry_run:
        parser.error("give --output-dir to assemble (and upload unless --dry-run), or --upload-only alone")

    try:
        if args.upload_only:
            folder = args.source
        else:
            folder = assemble_hub_folder(args.source, args.output_dir, repo_id=args.repo_id, dataset=args.dataset,
                                         variant=args.variant)
            print(f"Wrote the Hub folder {folder}: {', '.join(sorted(path.name for path in folder.iterdir()))}")
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    try:
        commit = upload_hub_folder(folder, args.repo_id, private=args.private, revision=args.revision,
                                   commit_message=args.commit_message)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except PublishError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Uploaded: {commit.commit_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
