"""Devices: where a model runs. :mod:`~edgeprune.devices.transport` reaches one (local, SSH: run, put, get) and
:mod:`~edgeprune.devices.probe` says what it is (its facts, and which of them key a measurement).

Nothing is imported here: the probe must stay importable (and runnable alone) without edgeprune's dependencies.
"""
