"""``unibus keygen``: a new user identity (nkey seed file, mode 0600)."""

from __future__ import annotations

import argparse
from pathlib import Path

from unibus.cli._common import Subparsers, add_json_arg, print_json
from unibus.core.nkeys import KeyPair, Prefix, write_seed_file


def register(verbs: Subparsers[argparse.ArgumentParser]) -> None:
    parser = verbs.add_parser(
        "keygen",
        help="create a user identity (nkey seed file) and print its public key",
        description="Write a new user nkey seed to FILE (mode 0600) and print the U… public "
        "key to give to an administrator.",
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="seed file to write"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing file")
    add_json_arg(parser)
    parser.set_defaults(handler=_keygen)


def _keygen(args: argparse.Namespace) -> int:
    pair = KeyPair.generate(Prefix.USER)
    write_seed_file(args.out, pair.seed, overwrite=args.force)
    if args.json:
        print_json({"public_key": pair.public_key, "seed_file": str(args.out)})
    else:
        print(pair.public_key)
    return 0
