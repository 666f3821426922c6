"""Identify: attach traits to a known user and merge an anonymous id's state into it.

The anonymous id and the user live in different slots, so this is three steps, each atomic
in its own slot and safe to retry:
  1. `export_user` (read-only, anonymous slot): its session document and raw affinities;
  2. `identify_user` (user slot): merge traits + exported state; records the anonymous id in
     `profile.merged`, so a retry after a crash does not add anything twice;
  3. DEL of the anonymous keys (anonymous slot).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from app.core.errors import ValidationError, from_redis_error
from app.core.events import ID_RE, ID_RULE, identity_for
from app.core.settings import EngineConfig
from app.redis import calls

MAX_TRAITS = 50
MAX_TRAIT_LEN = 256
TRAIT_NAME_LEN = 64


@dataclass(frozen=True)
class IdentifyResult:
    user_id: str
    status: str  # merged | already_merged | traits_only
    merged_items: int


def validate_traits(traits: Any) -> dict[str, Any]:
    if traits is None:
        return {}
    if not isinstance(traits, Mapping):
        raise ValidationError("traits", "must be an object")
    if len(traits) > MAX_TRAITS:
        raise ValidationError("traits", f"at most {MAX_TRAITS} traits")
    clean: dict[str, Any] = {}
    for name, value in traits.items():
        if not isinstance(name, str) or not 1 <= len(name) <= TRAIT_NAME_LEN:
            raise ValidationError("traits", f"trait names must be 1-{TRAIT_NAME_LEN} characters")
        if isinstance(value, str) and len(value) > MAX_TRAIT_LEN:
            raise ValidationError(f"traits.{name}", f"must be at most {MAX_TRAIT_LEN} characters")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValidationError(f"traits.{name}", "must be a finite number")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise ValidationError(f"traits.{name}", "must be a string, number, boolean or null")
        clean[name] = value
    return clean


def parse_identify(body: Any) -> tuple[str, str | None, dict[str, Any]]:
    if not isinstance(body, Mapping):
        raise ValidationError("body", "must be a JSON object")
    user_id = body.get("user_id")
    if not isinstance(user_id, str) or not ID_RE.match(user_id) or user_id.startswith("anon:"):
        raise ValidationError("user_id", f"is required: {ID_RULE.removeprefix('must be ')}")
    anon = body.get("anonymous_id")
    if anon is not None and (not isinstance(anon, str) or not ID_RE.match(anon)):
        raise ValidationError("anonymous_id", ID_RULE)
    return user_id, anon, validate_traits(body.get("traits"))


def identify(
    client: redis.Redis,
    cfg: EngineConfig,
    user_id: str,
    anonymous_id: str | None,
    traits: dict[str, Any],
) -> IdentifyResult:
    keys = cfg.keys()
    anon_identity = identity_for(None, anonymous_id) if anonymous_id else ""
    exported = None
    if anon_identity:
        exported = calls.fcall_ro(
            client, "export_user", calls.export_user_args(keys, anon_identity)
        )
    args = calls.identify_user_args(cfg, keys, user_id, anon_identity, traits, exported)
    try:
        reply = calls.fcall(client, "identify_user", args)
    except redis.ResponseError as exc:
        raise from_redis_error(exc) from exc
    status = calls.text(reply[0])
    if anon_identity and status in ("merged", "already_merged"):
        client.delete(*keys.user_all(anon_identity))
    return IdentifyResult(user_id, status, int(reply[1]))
