"""Moved to tests/support/models.py: kept only while tests/test_roles.py imports from here."""

from tests.support.models import tiny_model

__all__ = ["tiny_model"]
