"""The callout's signing keys: an issuer (account nkey) and a curve key (xkey), by
generation, so that they can be rotated without refusing anyone.

A server's ``auth_callout`` block names one issuer and one xkey, set together. The
callout holds every generation its material has: the current one (``issuer.seed``,
``xkey.seed``), and during a rotation the next (``*.next.seed``, staged before any server
uses it) or the previous (``*.previous.seed``, kept until no server uses it). A request
opens with the curve key its server was configured with, and its answer is signed by the
issuer of that same generation: so at every moment of a rotation, whichever generation a
server runs, any callout answers it as it expects (``unibus identities``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from unibus.authcallout.settings import Settings
from unibus.core.errors import ConfigError
from unibus.core.nkeys import KeyPair, read_seed_file
from unibus.core.xkeys import CurveKeyPair, read_curve_seed_file

__all__ = ["GENERATIONS", "KeyGeneration", "Keys"]

GENERATIONS: Final = ("current", "next", "previous")
"""Generation names; their files are ``issuer.seed`` / ``issuer.<name>.seed``."""


@dataclass(frozen=True)
class KeyGeneration:
    name: str
    issuer: KeyPair
    xkey: CurveKeyPair


def _sibling(path: Path, generation: str) -> Path:
    """``issuer.seed`` -> ``issuer.next.seed`` (beside it)."""
    return path.with_name(f"{path.name.removesuffix('.seed')}.{generation}.seed")


@dataclass(frozen=True)
class Keys:
    generations: tuple[KeyGeneration, ...]
    """The current generation first."""

    @property
    def issuer(self) -> KeyPair:
        return self.generations[0].issuer

    @property
    def xkey(self) -> CurveKeyPair:
        return self.generations[0].xkey

    @property
    def xkeys(self) -> tuple[CurveKeyPair, ...]:
        return tuple(g.xkey for g in self.generations)

    @classmethod
    def load(cls, settings: Settings) -> Keys:
        """The keys the settings name (``from_files``)."""
        return cls.from_files(settings.issuer_seed, settings.xkey_seed)

    @classmethod
    def from_files(cls, issuer_seed: Path, xkey_seed: Path) -> Keys:
        """The current keys from these files, and every other generation found beside them.

        Raises:
            ConfigError: a generation has one of its two files but not the other.
        """
        found = [
            KeyGeneration("current", read_seed_file(issuer_seed), read_curve_seed_file(xkey_seed))
        ]
        for name in GENERATIONS[1:]:
            issuer = _sibling(issuer_seed, name)
            xkey = _sibling(xkey_seed, name)
            if issuer.exists() != xkey.exists():
                raise ConfigError(
                    f"{issuer if issuer.exists() else xkey} has no partner: a {name} "
                    "generation needs both its issuer and its xkey seed "
                    "(`unibus identities` writes them together)"
                )
            if issuer.exists():
                found.append(
                    KeyGeneration(name, read_seed_file(issuer), read_curve_seed_file(xkey))
                )
        return cls(tuple(found))
