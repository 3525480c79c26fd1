"""What the parts of ``relay-runtime connector`` share: exit codes, environment names,
the usage error, and reading a secret or admin token file."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping

# The connector command's logger: a warning about a secret file reads as it always did.
log = logging.getLogger("relay_runtime.cli.connector")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

ENV_ADMIN_TOKEN = "RELAY_CONNECTOR_ADMIN_TOKEN"
ENV_URL = "RELAY_CONNECTOR_URL"
#: A secret file larger than this is refused (it is not a secret file).
MAX_SECRET_FILE_BYTES = 64 * 1024

_PREFIX = "relay-runtime: error:"


class UsageProblem(ValueError):
    """A bad option or input; its message is the one line printed (exit 2)."""


def read_secret_file(path: str, option: str) -> list[str]:
    """The non-empty, stripped lines of ``path``; ``UsageProblem`` names what is wrong.

    A secret file readable by others is used, with a WARNING (``chmod 600`` fixes it).
    """
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise UsageProblem(f"{option} {path}: not a regular file")
            data = handle.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise UsageProblem(f"{option} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise UsageProblem(f"{option} {path}: larger than {MAX_SECRET_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageProblem(f"{option} {path}: not UTF-8 text") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise UsageProblem(f"{option} {path}: the file is empty")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s %s is readable by others; chmod 600 %s", option, path, path)
    return lines


def read_admin_token(path: str | None, env: Mapping[str, str]) -> str | None:
    """The admin token: from ``path`` if given, else from the environment (None: none)."""
    if path is not None:
        return read_secret_file(path, "--admin-token-file")[0]
    return env.get(ENV_ADMIN_TOKEN, "").strip() or None
