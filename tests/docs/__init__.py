"""Tests of README.md and docs/. A package, so that its conftest.py is ``docs.conftest`` and does not replace
tests/conftest.py as the module ``conftest`` that other tests import ``tiny_backbone`` from."""
