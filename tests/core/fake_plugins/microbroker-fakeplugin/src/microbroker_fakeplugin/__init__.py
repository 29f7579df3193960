"""Test fixture: a third-party microbroker plugin."""
