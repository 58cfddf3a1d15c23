"""The steps of an identity rotation on a stack's material, what the callout loads and
what the nodes accept at each (``unibus.stack.rotation``, ``unibus.authcallout.keys``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from unibus.authcallout.keys import Keys
from unibus.core.errors import ConfigError
from unibus.core.nkeys import KeyPair, Prefix, read_seed_file, write_seed_file
from unibus.core.xkeys import CurveKeyPair, read_curve_seed_file
from unibus.stack.layout import StackLayout
from unibus.stack.material import auth_identities
from unibus.stack.rotation import Phase, phase, retire, stage, switch


@pytest.fixture
def layout(tmp_path: Path) -> StackLayout:
    layout = StackLayout.at(tmp_path / "stack")
    layout.identities.mkdir(parents=True)
    write_seed_file(layout.identity("issuer"), KeyPair.generate(Prefix.ACCOUNT).seed)
    write_seed_file(layout.identity("xkey"), CurveKeyPair.generate().seed)
    for name in ("callout", "internal", "system"):
        write_seed_file(layout.identity(name), KeyPair.generate(Prefix.USER).seed)
    return layout


def _loaded(layout: StackLayout) -> Keys:
    """What a callout pointed at the stack's seeds loads (its settings name these files)."""
    return Keys.from_files(layout.identity("issuer"), layout.identity("xkey"))


def test_stage_switch_retire_move_the_generations_and_the_callout_loads_each(
    layout: StackLayout,
) -> None:
    old = read_seed_file(layout.identity("issuer")).public_key
    assert phase(layout) is Phase.STEADY
    assert [g.name for g in _loaded(layout).generations] == ["current"]

    assert stage(layout).phase is Phase.STAGED
    staged = _loaded(layout)
    assert [g.name for g in staged.generations] == ["current", "next"]
    assert staged.issuer.public_key == old
    new = staged.generations[1].issuer.public_key

    assert switch(layout).phase is Phase.SWITCHED
    switched = _loaded(layout)
    assert [g.name for g in switched.generations] == ["current", "previous"]
    assert switched.issuer.public_key == new  # what the nodes' configs now name
    assert switched.generations[1].issuer.public_key == old

    assert retire(layout).phase is Phase.STEADY
    retired = _loaded(layout)
    assert [g.issuer.public_key for g in retired.generations] == [new]
    assert read_curve_seed_file(layout.identity("xkey")).public_key == retired.xkey.public_key


@pytest.mark.parametrize(
    ("step", "hint"), [(switch, "identities stage"), (retire, "identities stage")]
)
def test_a_step_out_of_order_is_refused_saying_what_to_run(
    layout: StackLayout, step: object, hint: str
) -> None:
    with pytest.raises(ConfigError, match=hint):
        step(layout)  # type: ignore[operator]
    stage(layout)
    with pytest.raises(ConfigError, match="identities switch"):
        stage(layout)


def test_half_a_generation_is_refused_by_the_step_and_by_the_callout(layout: StackLayout) -> None:
    stage(layout)
    (layout.identities / "xkey.next.seed").unlink()
    with pytest.raises(ConfigError, match="part of a next"):
        phase(layout)
    with pytest.raises(ConfigError, match="no partner"):
        _loaded(layout)


def test_the_nodes_accept_every_generation_of_a_service_identity_until_it_is_retired(
    layout: StackLayout,
) -> None:
    old = read_seed_file(layout.identity("internal")).public_key
    assert auth_identities(layout).other_users == ()
    stage(layout)
    staged = auth_identities(layout)
    new = read_seed_file(layout.identities / "internal.next.seed").public_key
    assert staged.internal_user == old
    assert ("internal", new) in staged.other_users
    switch(layout)
    switched = auth_identities(layout)
    assert switched.internal_user == new
    assert ("internal", old) in switched.other_users
    retire(layout)
    assert auth_identities(layout).other_users == ()
