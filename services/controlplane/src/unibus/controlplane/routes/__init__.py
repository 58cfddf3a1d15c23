"""The API's handlers, one module per resource; the route table is ``unibus.controlplane.openapi``.

Each signed handler takes ``(request, context, caller)`` (``context.Handler``) and is
called only for an authenticated, active caller; it decodes a typed body, calls one
operation and encodes the result.
"""

__all__: list[str] = []
