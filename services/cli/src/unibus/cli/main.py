"""Entry point of the ``unibus`` command: one sub-command module per verb group.

Conventions every verb follows: ``--help`` everywhere; ``--json`` where a script would
read the output; on failure, exit status 1 and one line on stderr that says what to do.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

import nats.errors

from unibus.core.connect import bound_tls_close_wait
from unibus.core.errors import UnibusError
from unibus.core.log import configure_logging

Handler = Callable[[argparse.Namespace], int]


def _verb_modules() -> list[ModuleType]:
    # Imported here, not at module level, so `unibus --help` stays fast and one broken
    # verb cannot stop the others from being listed.
    from unibus.cli import (
        backup,
        certs,
        chaoscheck,
        clientcheck,
        compose,
        deploy,
        identities,
        index,
        keys,
        migrate,
        provision,
        replace,
        retention,
        rollout,
        rooms,
        routeca,
        routesecret,
        stack,
        users,
    )

    return [
        stack,
        retention,
        rollout,
        replace,
        chaoscheck,
        users,
        rooms,
        index,
        clientcheck,
        certs,
        keys,
        migrate,
        compose,
        provision,
        deploy,
        backup,
        identities,
        routeca,
        routesecret,
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unibus",
        description="unibus: a private, end-to-end encrypted message bus on nats-server.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for module in _verb_modules():
        module.register(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Quiet by default: the CLI's own output is its result; warnings still reach stderr.
    configure_logging(json=False, level="warning")
    bound_tls_close_wait()
    handler: Handler = args.handler
    try:
        return handler(args)
    except UnibusError as exc:
        print(f"unibus {args.verb}: error: {exc}", file=sys.stderr)
        return 1
    except (nats.errors.Error, TimeoutError) as exc:
        # What a verb did not translate itself: still one line, never a traceback.
        print(
            f"unibus {args.verb}: error: the bus did not answer ({type(exc).__name__}: "
            f"{exc or 'no detail'}); check that the nodes are up (`unibus status`), "
            "then run it again",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
