"""Test fixture: a microbroker plugin that fails to import."""
