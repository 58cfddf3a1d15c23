"""The shared library's exception hierarchy, all of it.

Services translate these into HTTP statuses or callout denial reasons at their edge
only; inside the library they carry enough structure to decide without parsing text.
Four classes live beside the code that raises them, because they carry that code's
reason codes (marked with their module); every other class is defined here. The SDK's
errors extend this tree (``unibus.client.errors``), the migration's too
(``unibus.migrate.job``).

* UnibusError
  + ConfigError            a setting or a rendered configuration is unusable
    - PostureError         the configuration would run an insecure cluster
  + IdentityError          keys, signatures and tokens
    - NkeyError            malformed nkey, seed, checksum or hex key
    - JWTError             malformed, oversized, badly signed or unexpected JWT
    - XKeyError            an ``xkv1`` box that cannot be opened
    - ChainError           a room state chain that does not verify        (roomchain)
    - RequestSignatureError  an API request whose signature is refused    (signing)
  + InvalidNameError       a value that cannot be a subject token, KV key or consumer name
  + InvalidHandleError     a user handle that is empty, unprintable or too long
  + CertificateError       certificate material missing, unreadable or refused
  + StoreError             anything the Store could not do
    - NotFoundError        no such record (storage-agnostic)
    - RecordError          a stored record that does not decode          (models)
    - ConflictError        a create-only or compare-and-set write lost
      . LastAdminError     a user change that would leave the bus without an active admin
    - StoreUnavailableError  the backend did not answer in time or failed
    - AssetMissingError    a bucket/stream that provisioning should have made is absent
    - UnsupportedError     an operation this backend cannot do (a role change on a legacy file)
  + ProvisioningError      provisioning or scaling could not finish within its budget
  + StackError             the local stack could not start, stop or be found
  + PrivateFileError       a secret file readable by others, or unsafe to write  (files)
"""

from __future__ import annotations


class UnibusError(Exception):
    """Base of every error raised on purpose by unibus code."""


class ConfigError(UnibusError):
    """A setting or a rendered configuration is unusable.

    The message names the setting and says what to change.
    """

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class PostureError(ConfigError):
    """The configuration would run a cluster less secure than unibus allows."""


class InvalidHandleError(UnibusError):
    """A user handle that is empty, holds a control character or is too long.

    The message reads after the name of the field (``--handle``, ``handle``).
    """


class IdentityError(UnibusError):
    """A key, signature or token failed to parse or verify."""


class NkeyError(IdentityError):
    """Malformed nkey, seed or legacy hex key, or a wrong checksum or prefix."""


class JWTError(IdentityError):
    """Malformed, oversized, badly signed or unexpected JWT."""


class XKeyError(IdentityError):
    """An ``xkv1`` box that is malformed or does not open with the given keys."""


class InvalidNameError(UnibusError):
    """A value that cannot be used as a subject token, KV key or consumer name."""


class CertificateError(UnibusError):
    """Certificate material is missing, unreadable, or would be overwritten."""


class StoreError(UnibusError):
    """The Store could not complete an operation."""


class NotFoundError(StoreError):
    """No such record. Raised by every backend alike."""


class ConflictError(StoreError):
    """A create-only write found the key present, or a compare-and-set lost the race."""


class LastAdminError(ConflictError):
    """The change would take the last active administrator's role or access.

    Refused whoever asks (the API, the CLI): a bus without an active admin could be given
    one back only by hand. Promoting another user first makes the change possible.
    """


class StoreUnavailableError(StoreError):
    """The backend failed or did not answer within the bounded timeout.

    On an authorization decision this always means *deny*.
    """


class AssetMissingError(StoreError):
    """A bucket, stream or object store is absent.

    Provisioning creates assets; a read path never does, because silently re-creating an
    empty bucket would hide data loss.
    """

    def __init__(self, asset: str) -> None:
        super().__init__(
            f"{asset} does not exist; run provisioning (`unibus up` does it, or "
            "`unibus scale --replicas N`) instead of expecting a read to create it"
        )
        self.asset = asset


class UnsupportedError(StoreError):
    """The backend cannot do this at all; retrying or another input will not help.

    The legacy SQLite store flips a user's status but cannot change a role.
    """


class ProvisioningError(UnibusError):
    """Provisioning or scaling did not finish within its budget."""


class StackError(UnibusError):
    """The local stack could not be started, stopped or found."""
