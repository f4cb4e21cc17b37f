"""Probes: each turns a look at a device or integration into an Observation.

Library exceptions (aiohttp, pysnmp, aiomqtt, OSError, timeouts) stop at this boundary: a
probe never raises (but CancelledError), it reports a failed observation with a readable detail.
"""
