"""Rotating the stack's identities without refusing anyone: three steps, each followed by
a rollout.

What rotates together: the callout's issuer (it signs every user JWT) and xkey (it seals
the auth requests and answers), and the three service identities the servers know by
their public keys (the callout's, the internal one, the system one). Not the first
admin's: that is a user, changed as users are (add another admin, revoke). Two rules make
the steps safe: a server's ``auth_callout`` block names one issuer and one xkey, and the
callout answers a request with the generation its server uses
(``unibus.authcallout.keys``); a server accepts every generation of a service identity
its config lists. So:

1. ``stage``: a next generation of every key is written beside the current one. The
   rollout restarts every callout holding both issuers and xkeys, and every node
   accepting both generations of each service identity; everyone still uses the current.
2. ``switch``: the next generation becomes the current one, the old one is kept as the
   previous. The rollout restarts each node with the new issuer and xkey, and each
   service with its new identity; whatever a node or a service runs at any moment, its
   counterpart accepts it. Clients reconnect through the rollout with JWTs from the new
   issuer.
3. ``retire``: the previous generation is deleted. The rollout restarts everything with
   the new keys only: from then on the old service identities are refused by every
   server, an answer signed by the old issuer too, and a request sealed to the old xkey is
   not opened.

Each step refuses to run out of order and says which rollout to run next.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path

from unibus.core.errors import ConfigError
from unibus.core.nkeys import KeyPair, Prefix, write_seed_file
from unibus.core.xkeys import CurveKeyPair
from unibus.stack.layout import StackLayout

__all__ = ["NEXT_AFTER", "Phase", "RotationStep", "phase", "retire", "stage", "switch"]

_KEYS = ("issuer", "xkey", "callout", "internal", "system")


class Phase(enum.StrEnum):
    STEADY = "steady"
    """One generation: nothing to roll."""
    STAGED = "staged"
    """A next generation written; the callouts must hold it before the switch."""
    SWITCHED = "switched"
    """The nodes use the new generation; the previous one waits to be retired."""


@dataclass(frozen=True)
class RotationStep:
    done: str
    phase: Phase
    next_step: str


def _file(layout: StackLayout, key: str, generation: str = "") -> Path:
    suffix = f".{generation}" if generation else ""
    return layout.identities / f"{key}{suffix}.seed"


def phase(layout: StackLayout) -> Phase:
    """Where a rotation stands, from the files (a half-written step is refused)."""
    found = {
        generation: [_file(layout, key, generation).exists() for key in _KEYS]
        for generation in ("next", "previous")
    }
    for generation, present in found.items():
        if any(present) and not all(present):
            raise ConfigError(
                f"{layout.identities} holds part of a {generation} generation of identities: "
                f"restore the missing {generation} seed from a backup of the material"
            )
    if all(found["next"]) and all(found["previous"]):
        raise ConfigError(f"{layout.identities} holds both a next and a previous generation")
    if all(found["next"]):
        return Phase.STAGED
    if all(found["previous"]):
        return Phase.SWITCHED
    return Phase.STEADY


def _require(layout: StackLayout, wanted: Phase, step: str) -> None:
    now = phase(layout)
    if now is not wanted:
        raise ConfigError(
            f"cannot {step} the callout keys while the rotation is {now.value}: {NEXT_AFTER[now]}"
        )


NEXT_AFTER = {
    Phase.STEADY: "nothing is staged; begin with `unibus identities stage`",
    Phase.STAGED: "after a rollout, run `unibus identities switch`",
    Phase.SWITCHED: "after a rollout, run `unibus identities retire`",
}


def stage(layout: StackLayout) -> RotationStep:
    """Write a next generation of every key beside the current ones."""
    _require(layout, Phase.STEADY, "stage")
    write_seed_file(_file(layout, "issuer", "next"), KeyPair.generate(Prefix.ACCOUNT).seed)
    write_seed_file(_file(layout, "xkey", "next"), CurveKeyPair.generate().seed)
    for key in ("callout", "internal", "system"):
        write_seed_file(_file(layout, key, "next"), KeyPair.generate(Prefix.USER).seed)
    return RotationStep(
        "a next issuer, xkey and service identities written",
        Phase.STAGED,
        "roll out, then `unibus identities switch`",
    )


def switch(layout: StackLayout) -> RotationStep:
    """Make the next generation current; keep the old one as the previous."""
    _require(layout, Phase.STAGED, "switch")
    for key in _KEYS:
        os.replace(_file(layout, key), _file(layout, key, "previous"))
        os.replace(_file(layout, key, "next"), _file(layout, key))
    return RotationStep(
        "the next generation made current",
        Phase.SWITCHED,
        "roll out (each node and service takes the new keys), then `unibus identities retire`",
    )


def retire(layout: StackLayout) -> RotationStep:
    """Delete the previous generation of every key."""
    _require(layout, Phase.SWITCHED, "retire")
    for key in _KEYS:
        _file(layout, key, "previous").unlink()
    return RotationStep(
        "the previous generation deleted",
        Phase.STEADY,
        "roll out: from then on only the new keys are accepted",
    )
