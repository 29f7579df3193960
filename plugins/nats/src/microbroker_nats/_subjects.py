"""NATS subjects: wildcards, and the checks a subject must pass before it is sent."""

from __future__ import annotations

from microbroker import InvalidTopic, Wildcards

WILDCARDS = Wildcards(separator=".", one="*", many=">")


def is_pattern(topic: str) -> bool:
    """Whether ``topic`` holds a wildcard (``*`` or ``>``)."""
    return "*" in topic or ">" in topic


def check_pattern(topic: str) -> None:
    """Raise :class:`~microbroker.InvalidTopic` for a subject no subscription can have."""
    if not is_pattern(topic) and " " not in topic:
        return
    if any(c in topic for c in " \t\r\n"):
        raise InvalidTopic(f"a NATS subject cannot contain whitespace: {topic!r}")
    levels = topic.split(".")
    for index, level in enumerate(levels):
        if level == ">" and index != len(levels) - 1:
            raise InvalidTopic(f"'>' must be the last level of a subject: {topic!r}")
        if level not in ("*", ">") and ("*" in level or ">" in level):
            raise InvalidTopic(f"a wildcard must be a whole level of the subject: {topic!r}")


def check_literal(topic: str) -> None:
    """Raise :class:`~microbroker.InvalidTopic` for a wildcard subject (publish, request)."""
    for level in topic.split("."):
        if level in ("*", ">"):
            raise InvalidTopic(
                f"cannot publish to a wildcard subject {topic!r}: wildcards are for subscribe"
            )


def covers(pattern: str, subject: str) -> bool:
    """Whether every subject matched by ``subject`` is matched by ``pattern``."""
    p_levels = pattern.split(".")
    s_levels = subject.split(".")
    for index, level in enumerate(p_levels):
        if level == ">":
            return len(s_levels) > index
        if index >= len(s_levels):
            return False
        other = s_levels[index]
        if other == ">":
            return False
        if level != "*" and level != other:
            return False
    return len(p_levels) == len(s_levels)
