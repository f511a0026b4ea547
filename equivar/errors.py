"""Errors that are the user's to fix: the entry point prints them as one line, without a traceback."""


class UserError(Exception):
    """A problem with the config or the environment that the message explains how to fix."""


class ConfigError(UserError, ValueError):
    """The config asks for something that does not exist or cannot work."""


class DataUnavailableError(UserError, RuntimeError):
    """The requested data is not on this machine and could not be fetched."""
