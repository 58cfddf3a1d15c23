"""The ``unibus`` command line."""
