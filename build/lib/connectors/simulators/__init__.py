"""Carrier simulators: real servers on loopback for tests and benchmarks.

Import from the modules (``connectors.simulators.smsc``, ``.threaded``, ``.http_channel``);
this package imports nothing so that ``python -m connectors.simulators.smsc`` runs cleanly.
"""
