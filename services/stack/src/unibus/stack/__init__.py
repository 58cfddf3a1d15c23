"""The local stack: a real nats-server cluster and the unibus services as local processes.

The same launcher starts ``unibus up`` and the integration-test clusters.
"""
