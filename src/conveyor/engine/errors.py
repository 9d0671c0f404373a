"""Errors the engine reports to the CLI, each with the exit code the CLI returns."""

from __future__ import annotations


class EngineError(Exception):
    exit_code = 1


class UserError(EngineError):
    """Bad input (unknown release, bad config, port clash): nothing was changed. Exit 2."""

    exit_code = 2


class Refused(EngineError):
    """A valid request that cannot run now (another deployment is in progress). Exit 1."""

    exit_code = 1
