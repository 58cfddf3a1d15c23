"""unibus controlplane service (package boundary; see the README's layout section)."""
