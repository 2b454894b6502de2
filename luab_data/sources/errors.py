"""Errors that stop a read: the source as a whole is unusable (not one bad record)."""


class SourceError(RuntimeError):
    """A source that cannot be read on: truncated archive, wrong kind, unreadable file."""
