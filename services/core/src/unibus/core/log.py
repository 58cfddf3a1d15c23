"""structlog configuration shared by every unibus process.

Quiet by default: INFO level, JSON lines in production, a console renderer for people.
What a line may carry (SPEC §3: no subjects, payloads or secrets at the default level)
is enforced here rather than at every call site, by ``Redactor``:

* Secrets, at every level (``debug`` included): values under secret keys (``seed``,
  ``token``, ``jwt``, ...), nkey seeds (``S`` + 57 or more base32 capitals: ``SU…``,
  ``SA…``, ``SX…``; encoded private keys ``P…`` alike) and JWTs (``eyJ….eyJ….…``)
  wherever they appear in text.
* Names and data, unless debug logging was asked for: values under data keys
  (``subject``, ``payload``, ``body``, ...), NATS subjects of the room, inbox and
  server namespaces (``unibus.room.…``, ``_INBOX…``, ``_R_.…``, ``$JS.…``, ``$SYS.…``,
  ``$KV.…``) and room ids, wherever they appear in text.

"Wherever they appear in text" means every ``str`` value at any depth, the event text,
an exception passed as a value and the formatted traceback (``exception``): a nats-py
error names the subject it refused, and ``error=str(exc)`` would print it.

Public keys (``U…``, ``A…``, ``N…``, ``X…``: 56 characters) are kept. They are
identities, not secrets: any active user may read any other's (SPEC §6), and an
operator needs the key of the user a line is about to act on it (``unibus users``).

Standard-library loggers (nats-py, Hypercorn, asyncio) go through the same processors
when this process owns logging, so their text is redacted as well.
"""

from __future__ import annotations

import logging as _stdlib_logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Final

import structlog

from unibus.core import naming

REDACTED: Final = "[redacted]"

_SECRET_KEYS: Final = frozenset({"seed", "secret", "password", "pass", "token", "jwt"})
_DATA_KEYS: Final = frozenset({"sig", "signature", "payload", "data", "body", "subject", "sealed"})

# A seed is "S", its kind and 56 more base32 capitals (58 in all), an encoded private key
# "P" and longer. A public key (56) is too short to hold such a run, whatever its letters;
# not anchored, so a seed glued to a public key or other capitals is caught too.
_SEED: Final = r"[SP][A-Z2-7]{57,}"
# Header and payload of any JWT start with '{"' in base64url: "eyJ".
_JWT: Final = r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]*"
# A subject token ends where text around it does: blanks, quotes, separators, brackets.
# No unibus or server subject has a ':' in it; error texts put one after the subject.
_SUBJECT_PART: Final = r"""[^\s.\"'`\\,:;=()\[\]{}]+"""
_SUBJECT: Final = (
    rf"(?<![\w$.])(?P<root>{re.escape(naming.ROOM_SUBJECT_PREFIX)}|\$[A-Z][A-Z0-9]*|_INBOX|_R_)"
    rf"(?:_[\w-]+)?(?:\.{_SUBJECT_PART})+"
    r"|(?<![\w$.])(?P<inbox>_INBOX)_[\w-]+"
)
_ROOM_ID: Final = (
    rf"(?<![A-Za-z0-9])[{naming.ROOM_ID_ALPHABET}]{{{naming.ROOM_ID_LENGTH}}}(?![A-Za-z0-9])"
)
_SECRETS: Final = re.compile(rf"(?P<seed>{_SEED})|(?P<jwt>{_JWT})")
_SECRETS_AND_NAMES: Final = re.compile(
    rf"(?P<seed>{_SEED})|(?P<jwt>{_JWT})|(?P<subject>{_SUBJECT})|(?P<room>{_ROOM_ID})"
)


def _replacement(match: re.Match[str]) -> str:
    found = match.groupdict()
    if found.get("subject") is not None:
        # The namespace is kept: whether a failure was about a room or the JetStream API
        # is what an operator needs, and it names nothing.
        return f"{found['root'] or found['inbox']}.{REDACTED}"
    kind = next(kind for kind in ("seed", "jwt", "room") if found.get(kind) is not None)
    return f"[redacted {kind}]"


def redact_text(text: str) -> str:
    """``text`` as a log line at the default level would show it: for what is printed
    rather than logged (a service's one-line exit message)."""
    return _DEFAULT.text(text)


class Redactor:
    """structlog processor: secrets out of every line, names and data too unless ``names``
    is false (debug). Keys are kept; values are copied, never changed in place."""

    def __init__(self, *, names: bool = True) -> None:
        self._keys = _SECRET_KEYS | _DATA_KEYS if names else _SECRET_KEYS
        self._pattern = _SECRETS_AND_NAMES if names else _SECRETS

    def __call__(
        self, _: Any, __: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key, value in list(event.items()):
            event[key] = REDACTED if key in self._keys else self._value(value)
        return event

    def text(self, text: str) -> str:
        if len(text) < naming.ROOM_ID_LENGTH and "." not in text and "_INBOX" not in text:
            # Too short for a seed or a room id and no subject in it: most values (a
            # reason code, an error's type name) are, and a search costs more than this.
            return text
        return self._pattern.sub(_replacement, text)

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            # Keys of nested mappings are data (a room id, a subject), not field names.
            return {
                self._value(key): REDACTED if key in self._keys else self._value(item)
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [self._value(item) for item in value]
        if isinstance(value, tuple):
            return tuple(self._value(item) for item in value)
        if isinstance(value, BaseException):
            # The renderer would print its repr, message and all.
            return self.text(repr(value))
        return value


_DEFAULT: Final = Redactor()


def _stderr_logger(*_: Any) -> structlog.PrintLogger:
    # Resolve sys.stderr per logger, not once at configure time: an embedding program (or a
    # test runner) may swap and close the stream it had when logging was configured.
    return structlog.PrintLogger(file=sys.stderr)


class _StderrHandler(_stdlib_logging.StreamHandler):  # type: ignore[type-arg]
    """The standard library's records, on whatever ``sys.stderr`` is when they are written."""

    def emit(self, record: _stdlib_logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _route_stdlib(formatter: _stdlib_logging.Formatter) -> None:
    root = _stdlib_logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    if root.handlers:
        return  # an embedding program (or a test runner) owns the standard library's logging
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    root.addHandler(handler)
    # nats-py logs subjects below WARNING; what it logs at WARNING and above is redacted.
    root.setLevel(_stdlib_logging.WARNING)


def configure_logging(*, json: bool = True, level: str = "info", debug: bool = False) -> None:
    """Configure structlog (and the stdlib root logger) for this process.

    Args:
        json: one JSON object per line (production) instead of the console renderer.
        level: minimum level name.
        debug: lower the level to debug *and* show subjects, room ids and data; secrets
            stay redacted. For local diagnosis only.
    """
    numeric = (
        _stdlib_logging.DEBUG
        if debug
        else _stdlib_logging.getLevelNamesMapping().get(level.upper(), _stdlib_logging.INFO)
    )
    rendered: list[Any] = [
        # Tracebacks become text before redaction (a rich traceback would also show locals).
        structlog.processors.format_exc_info,
        Redactor(names=not debug),
        # Level and time after redaction: they are ours, and need no search.
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(),
    ]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *rendered],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    _route_stdlib(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendered],
        )
    )
    # asyncio warns about every TLS connection nats-py closes ("eof_received"): noise.
    _stdlib_logging.getLogger("asyncio").setLevel(_stdlib_logging.ERROR)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
