"""Spreading a job's independent work over Ray workers (``--workers``, ``--ray-address``)."""
