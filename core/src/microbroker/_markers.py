"""pluggy markers for the ``microbroker`` project name."""

import pluggy

PROJECT = "microbroker"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
"""Mark a function in a plugin module as the implementation of a microbroker hook."""
