"""unibus authcallout service (package boundary; see the README's layout section)."""
