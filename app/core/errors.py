"""One exception hierarchy for the engine, and the Lua error codes mirrored once.

Lua Functions fail with `redis.error_reply("ERR_CODE message")`; `from_redis_error` maps the
code prefix back to the matching Python class so callers catch typed errors, not strings.
"""

from __future__ import annotations

import redis


class EngineError(Exception):
    """Base class of every error this project raises on purpose."""


class RedisSetupError(EngineError):
    """Redis is unreachable, too old, or lacks a module; or the embedded server failed."""


class SearchIndexError(RedisSetupError):
    """The product search index is missing, or was built with another vectorizer/dimension
    than the app uses, or a vectorizer is unavailable (HTTP 503, like other setup errors)."""


class ConfigError(EngineError):
    """The process cannot start as configured (a busy port, a locked data folder, ...)."""


class LibraryVersionError(EngineError):
    """The Functions library loaded in Redis is not the one this code ships."""


class ValidationError(EngineError):
    """Bad input; `field` names the offending field (HTTP 422)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class AuthError(EngineError):
    """Missing or wrong API key (HTTP 401)."""


class ForbiddenError(EngineError):
    """A valid key, but no proof for the shopper the request is about (HTTP 403: the Segment
    SDKs do not retry a 4xx other than 429)."""


class TooLargeError(ValidationError):
    """A body or message over its size limit (HTTP 413, answered before reading the rest)."""


class RateLimitedError(EngineError):
    """Too many requests from one key or address (HTTP 429 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RedisUnavailableError(RedisSetupError):
    """Redis does not answer (the health probe saw it hang or refuse): HTTP 503, Retry-After."""


class FunctionError(EngineError):
    """A Redis Function refused its input. `code` is the Lua error code."""

    code = "ERR_ENGINE"

    def __init__(self, message: str) -> None:
        super().__init__(message)


class BadArgumentError(FunctionError):
    code = "ERR_BADARG"


class KeyLayoutError(FunctionError):
    code = "ERR_KEYS"


class WrongTypeError(FunctionError):
    code = "ERR_WRONGTYPE"


class BlockOverlapError(FunctionError):
    """`apply_blocks` got a block that straddles what its slot already applied."""

    code = "ERR_OVERLAP"


class DataLayoutError(RedisSetupError):
    """The data in Redis was written by another key layout or partition count."""


# The Lua side raises exactly these codes (see lua/00_common.lua: `fail(code, msg)`).
LUA_ERROR_CODES: dict[str, type[FunctionError]] = {
    cls.code: cls for cls in (BadArgumentError, KeyLayoutError, WrongTypeError, BlockOverlapError)
}


class RedisOutOfMemoryError(EngineError):
    """Redis is at maxmemory (policy noeviction): the write was refused, nothing was evicted
    (HTTP 503 with Retry-After, and an alert in the log)."""


class RedisPermissionError(EngineError):
    """The ACL user may not run this command or touch this key: a deployment error (HTTP 500)."""


def from_redis_error(exc: redis.ResponseError) -> EngineError:
    """Turn a Function's error reply into its typed Python error (others pass as FunctionError)."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return RedisOutOfMemoryError(f"Redis is out of memory: {exc}")
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return RedisPermissionError(f"Redis refused (ACL): {exc}")
    text = str(exc)
    code = text.split(" ", 1)[0]
    cls = LUA_ERROR_CODES.get(code)
    if cls is not None:
        return cls(text.split(" ", 1)[1] if " " in text else text)
    if "WRONGTYPE" in text:
        return WrongTypeError(text)
    return FunctionError(text)
