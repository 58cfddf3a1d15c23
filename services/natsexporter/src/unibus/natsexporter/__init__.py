"""unibus NATS exporter: one nats-server's monitoring endpoint, in Prometheus form.

Why it exists: the usual tool, prometheus-nats-exporter, comes as a container image or a
GitHub release, and neither a container registry nor GitHub is reachable from where unibus
is built and run. This is the smallest sound replacement: one exporter per nats-server node
(a sidecar, as prometheus-nats-exporter is run), reading that node's ``/varz``, ``/routez``
and ``/jsz`` when Prometheus scrapes it, and serving what they say under metric names that
mirror prometheus-nats-exporter's meaning (``nats_server_*``, ``nats_jetstream_*``), so
alert rules and dashboards read like theirs.

The metric names are a contract (alert rules and dashboards are written against them);
``unibus.natsexporter.collector`` lists every family. Settings: ``settings``; process:
``python -m unibus.natsexporter``.
"""
