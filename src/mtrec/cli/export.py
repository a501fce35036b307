"""``mtrec export``: a trained model as ONNX graphs or Parquet tables, for other runtimes."""

from __future__ import annotations

import argparse

from mtrec.cli._args import add_option

DESCRIPTION = """\
Export a trained model for runtimes other than mtrec.
onnx (needs pip install "mtrec[export]"): user_encoder.onnx and item_encoder.onnx (indices in;
the watch and rating vectors and biases out), rating_head.onnx (the rating MLP and biases), every
batch dimension dynamic, and model.json saying how they combine: p = u.q + a + b for the watch
score, and the external ids of the indices.
parquet: users.parquet and items.parquet, each id's watch vector and bias, for vector databases;
p = dot(user.vector, item.vector) + user.bias + item.bias.
The export is written beside DIR and renamed into place once complete, with manifest.json
recording the SHA-256 of each file. --model must be a complete run (or a model file).
"""

EXAMPLES = """\
examples:
  mtrec export --model run/quality_shared=True_LF=1_LR=0.1 --to export/onnx --format onnx
  mtrec export --model run/quality_shared=True_LF=1_LR=0.1 --to export/vectors --format parquet --force
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from mtrec.serving.export import WRITERS

    parser = subparsers.add_parser(
        "export",
        help="export a trained model as ONNX graphs or Parquet vectors",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_option(parser, "--model", required=True, metavar="RUN_DIR", help="run directory or model.safetensors file")
    add_option(parser, "--to", required=True, metavar="DIR", help="the folder to create")
    add_option(parser, "--format", choices=list(WRITERS), required=True, help="onnx or parquet")
    add_option(
        parser, "--force", action="store_true", help="replace DIR if it holds an earlier export (a folder holding anything else is never replaced)"
    )
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from mtrec.serving.export import export_run, verify_export

    folder = export_run(args.model, args.to, args.format, args.force)
    files = sorted(verify_export(folder)["files"])
    print(f"exported {args.model} as {args.format} to {folder}: {', '.join(files)} (checked by manifest.json)")
    return 0
