"""``unibus identities``: rotate the stack's identities, one step at a time.

The callout's issuer and xkey and the callout, internal and system identities, together:
``stage``, ``switch`` and ``retire``, each followed by a rollout (the step says which);
``status`` says where a rotation stands. Why three steps: ``unibus.stack.rotation``.
"""

from __future__ import annotations

import argparse

from unibus.cli._common import Subparsers
from unibus.cli._rotating import add_rotation_args, print_step, rotation_target
from unibus.stack import rotation

_EPILOG = """\
a whole rotation, on the local stack (with --compose, or --topology/--out, the same):
  unibus identities stage   --dir .unibus && unibus rollout --dir .unibus
  unibus identities switch  --dir .unibus && unibus rollout --dir .unibus
  unibus identities retire  --dir .unibus && unibus rollout --dir .unibus

Every rollout goes node by node; no connection is refused on the way. Do not skip a
rollout: a switch before every callout and node holds the next keys refuses clients.
The first admin's key is a user's: add another admin and revoke it to replace it.
Other copies of the internal or system seed (an operator's machine, stack.json) must be
taken from the stack's directory again after the switch.
"""


def register(verbs: Subparsers[argparse.ArgumentParser]) -> None:
    parser = verbs.add_parser(
        "identities",
        help="rotate the callout's issuer and xkey and the service identities, no downtime",
        description="Rotate the key that signs every user JWT (the issuer), the key that "
        "seals auth requests (the xkey) and the callout, internal and system identities, "
        "in three steps, each followed by a rollout.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_rotation_args(parser)
    parser.set_defaults(handler=_identities)


def _identities(args: argparse.Namespace) -> int:
    target = rotation_target(args)
    if args.step == "status":
        now = rotation.phase(target.layout)
        print_step(args, {"phase": now.value, "next": rotation.NEXT_AFTER[now]})
        return 0
    step = {
        "stage": rotation.stage,
        "switch": rotation.switch,
        "retire": rotation.retire,
    }[args.step](target.layout)
    # The nodes' configs name the current issuer, xkey and service identities, and hosts
    # and compose volumes receive the seeds from the rendered directories.
    target.render_again()
    next_step = f"{target.rollout}; then {step.next_step}"
    print_step(args, {"done": step.done, "phase": step.phase.value, "next": next_step})
    return 0
