"""unibus migrate service (package boundary; see the README's layout section)."""
