"""unibus controlplane service (package boundary; see the README's layout section).

``python -m unibus.controlplane`` serves the API; ``app.build_app`` assembles it.
"""

__all__: list[str] = []
