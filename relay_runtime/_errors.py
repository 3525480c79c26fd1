"""Exceptions the relay runtime raises to its caller."""

from __future__ import annotations


class RelayError(Exception):
    """Base class of the runtime's own exceptions."""


class RelayDisabled(RelayError):
    """The connector refused a freshly minted credential (terminal 4401, RC §6.5).

    Raised out of the supervisor's ``run`` (and so out of ``run_gateway``); the CLI maps it to
    exit status 3. Nothing re-dials until the process restarts with new credentials.
    """

    def __init__(
        self,
        message: str = "relay disabled: connector refused a freshly minted "
        "credential (4401); re-provision or re-enroll to re-enable",
    ) -> None:
        super().__init__(message)


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions an exception group carries, however deeply nested (``[exc]`` for a
    plain exception), in order."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [exc]
