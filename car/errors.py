"""The errors car expects and can explain; anything else is a bug."""

from __future__ import annotations


class CarError(Exception):
    """An error with a message a user can act on."""

    exit_code, http_status, code = 1, 500, "error"


class ConfigError(CarError):
    exit_code, http_status, code = 2, 400, "config_error"


class UsageError(CarError):
    """A command run in the wrong place or with the wrong arguments."""

    exit_code, http_status, code = 2, 400, "usage_error"


class BadRequest(CarError):
    exit_code, http_status, code = 2, 400, "bad_request"


class NotFound(CarError):
    http_status, code = 404, "not_found"


class Conflict(CarError):
    """Already running, a stale etag: the request clashes with the current state."""

    http_status, code = 409, "conflict"


class LockError(Conflict):
    code = "locked"


class StaleEtag(Conflict):
    """A doc changed on disk since the client loaded it (its etag is stale): nothing was written."""

    code = "stale_etag"


class AgentError(CarError):
    """The agent cannot be started (binary missing, not executable)."""

    http_status, code = 400, "agent_error"


class StateError(CarError):
    """A state file on disk cannot be read; it is left as it is (until fixed, the repo cannot run)."""

    http_status, code = 409, "state_error"


class ManifestError(CarError):
    exit_code, http_status, code = 2, 500, "manifest_error"


class InitError(CarError):
    """A repo or hub cannot be set up: something on disk is in the way (a file, permissions); over
    HTTP a 409, since the request is fine and the server works: the repo's files need the fix."""

    http_status, code = 409, "init_error"


def os_error_message(exc: OSError) -> str:
    """An OSError car did not expect at that point (a disk that filled up during a run, a directory
    made read-only) as one line for a user: the file, what the system said, and what to do."""
    import errno  # built into the interpreter: costs nothing

    what = f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"{what}; free some disk space, then run the command again"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{what}; check the permissions there (and that the file system is writable), then run again"
    return f"{what}; fix that, then run the command again"


def error_line(exc: BaseException) -> str:
    """An error as one line for a user: a CarError's message; an OSError with its file and what to do."""
    return os_error_message(exc) if isinstance(exc, OSError) else str(exc)
