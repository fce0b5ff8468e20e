"""Moved to tests/support/: kept only while tests/test_roles.py and tests/test_corpus_measure.py import from here."""

from tests.support.checks import hook_count
from tests.support.models import as_loaded, tiny_loaded

__all__ = ["as_loaded", "hook_count", "tiny_loaded"]
