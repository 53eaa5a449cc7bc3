"""Contract suites that every registered plugin runs: samplers, pruners and schedulers, trainers,
runtimes. Like `optuna.testing`, each suite is a pytest test case that a test module subclasses
and parametrizes over a registry; they run on in-memory studies and tiny data, in milliseconds
to seconds, so the whole matrix belongs in the fast stage of the tests.

This package imports pytest: it is for test modules, never for the service.
"""

from __future__ import annotations
