"""The brokers that ship with the core: ``memory`` (and ``http``)."""
