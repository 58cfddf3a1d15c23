"""The unibus client: the signed API client now, the E2E SDK as it lands."""
