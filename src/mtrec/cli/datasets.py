"""``mtrec datasets``: list the MovieLens releases and download them."""

from __future__ import annotations

import argparse

from mtrec.cli._args import add_option
from mtrec.data.datasets import RELEASES, download_release, is_present, resolve_data_dir


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "datasets",
        help="list and download the MovieLens releases",
        description="List the MovieLens releases mtrec knows, and download them into the data directory.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    listing = actions.add_parser("list", help="the releases, and whether each is in the data directory")
    add_option(listing, "--data-dir", default=None, metavar="DIR", help="default $MTREC_DATA_DIR, else ~/.cache/mtrec")
    listing.set_defaults(handler=list_releases)
    download = actions.add_parser("download", help="download, verify and extract a release")
    download.add_argument("name", choices=list(RELEASES), help="the release")
    add_option(download, "--data-dir", default=None, metavar="DIR", help="default $MTREC_DATA_DIR, else ~/.cache/mtrec")
    add_option(download, "--no-progress", action="store_true", help="no progress bar")
    download.set_defaults(handler=download_one)
    parser.set_defaults(handler=lambda args: _usage(parser))
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def list_releases(args: argparse.Namespace) -> int:
    root = resolve_data_dir(args.data_dir)
    rows = [("name", "archive", "folder", "ratings", "scale", "checksum", "present")]
    for release in RELEASES.values():
        low, high = release.rating_scale
        rows.append(
            (
                release.name,
                release.archive,
                release.folder,
                release.ratings_file,
                f"{low:g}-{high:g}",
                release.checksum_source,
                "yes" if is_present(release, root) else "no",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"\ndata directory: {root}")
    return 0


def download_one(args: argparse.Namespace) -> int:
    folder = download_release(args.name, args.data_dir, progress=not args.no_progress)
    print(f"{args.name}: {folder}")
    return 0
