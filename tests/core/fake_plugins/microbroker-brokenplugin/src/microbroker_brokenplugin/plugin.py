"""Fails at import, as a plugin with a missing dependency does."""

raise ImportError("microbroker_brokenplugin needs a client library that is not installed")
