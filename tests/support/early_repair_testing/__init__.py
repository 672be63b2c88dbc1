"""Helpers the tests and benchmarks share: moto and kmock servers, fault proxies, results
trees, reference implementations, and example plug-ins (a repair method, a readiness policy).

A package with a name of its own, in a folder of its own: pytest puts ``tests/support`` on
``sys.path`` (pyproject's ``pythonpath``), and subprocesses that need these modules get it on
``PYTHONPATH``. That folder holds nothing but this package, so nothing else becomes
importable by accident: putting ``tests/`` itself on the path would let ``tests/orchestrator``
and ``tests/trainer_image`` (folders without ``__init__``) shadow the product packages as
namespace packages, and loose modules (``paths``, ``s3_server``) could collide with installed
distributions. Import as ``from early_repair_testing.s3_server import ...``; plug-ins by path
as ``early_repair_testing.nudge_repair:repair``.
"""
