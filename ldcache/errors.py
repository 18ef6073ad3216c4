"""Errors that describe a user mistake: the CLI prints their message, without a traceback."""


class LDCacheError(Exception):
    """Something the user can fix (a path, an option, a mismatched store); the message says how."""
