"""Shared fixtures for every distribution's tests. Server fixtures live in ``support/``."""
