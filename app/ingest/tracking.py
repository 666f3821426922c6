"""Apply translated Segment / RudderStack messages (app/ingest/segment.py) to Redis, in order.

Engine events go through the engine's `Ingestor` (every hook, dedup by messageId); an identify
or alias goes through `users.identify` (traits + merge of the anonymous id). Events queued
before an identify are ingested first, so a batch "anonymous views, identify, more views"
merges exactly what came before it. Messages with no engine event are appended to a capped
tracking log (in `TRACKING_PARTS` parts by messageId, so page views spread over a cluster's
masters; read it whole with `tracking_entries`); their messageIds are remembered
`seen_ttl_s` (a retried batch is a duplicate).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from app.core.errors import FunctionError, from_redis_error
from app.core.events import Event
from app.core.keys import TRACKING_PARTS
from app.core.settings import EngineConfig
from app.ingest import users
from app.ingest.ingestor import Ingestor
from app.ingest.segment import Action, Identify, TrackingConfig
from app.redis import calls


@dataclass(frozen=True)
class Outcome:
    status: str  # accepted | duplicate | rejected
    reason: str = ""


class TrackingSink:
    def __init__(
        self, client: redis.Redis, engine: EngineConfig, ingestor: Ingestor, cfg: TrackingConfig
    ) -> None:
        self.client = client
        self.engine = engine
        self.ingestor = ingestor
        self.cfg = cfg
        self.keys = engine.keys()

    def apply(self, actions: Sequence[Action]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(actions)
        others = [i for i, a in enumerate(actions) if a.event is None]
        seen = self._seen([actions[i].message_id for i in others])
        events: list[tuple[int, Event]] = []
        traits_only: list[tuple[int, Identify]] = []  # identify without a merge: pipelined

        def flush() -> None:
            if events:
                report = self.ingestor.ingest([ev for _, ev in events])
                for (i, _), status in zip(events, report.statuses, strict=True):
                    outcomes[i] = Outcome(status)
                events.clear()
            if traits_only:
                for (i, _), outcome in zip(traits_only, self._traits(traits_only), strict=True):
                    outcomes[i] = outcome
                traits_only.clear()

        for i, action in enumerate(actions):
            ident = action.identify
            if action.event is not None:
                if traits_only:
                    flush()  # keep the order of writes per user
                events.append((i, action.event))
            elif action.message_id in seen:
                outcomes[i] = Outcome("duplicate")
            elif ident is not None and ident.anonymous_id is None:
                if events:
                    flush()
                traits_only.append((i, ident))
            elif ident is not None:
                flush()  # a merge takes what came before it
                outcomes[i] = self._merge(ident)
            else:
                outcomes[i] = Outcome("accepted")
        flush()
        handled = [a for a, o in zip(actions, outcomes, strict=True)
                   if a.event is None and o == Outcome("accepted")]  # fmt: skip
        self._remember(handled)
        return [o or Outcome("rejected", "not processed") for o in outcomes]

    def _merge(self, ident: Identify) -> Outcome:
        try:
            users.identify(self.client, self.engine, ident.user_id, ident.anonymous_id,
                           ident.traits)  # fmt: skip
        except FunctionError as exc:  # the Function refused this input (nothing written)
            return Outcome("rejected", str(exc))
        return Outcome("accepted")

    def _traits(self, batch: Sequence[tuple[int, Identify]]) -> list[Outcome]:
        """Traits-only identifies in one pipeline round trip (profile sync sends thousands)."""
        pipe = self.client.pipeline(transaction=False)
        for _, ident in batch:
            args = calls.identify_user_args(self.engine, self.keys, ident.user_id, "",
                                            ident.traits, None)  # fmt: skip
            calls.fcall(pipe, "identify_user", args)
        replies = pipe.execute(raise_on_error=False)
        out = []
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                out.append(Outcome("rejected", str(from_redis_error(reply))))
            elif isinstance(reply, Exception):
                raise reply  # not the input's fault (connection, ...): the caller retries
            else:
                out.append(Outcome("accepted"))
        return out

    def _seen(self, message_ids: Sequence[str]) -> set[str]:
        if not message_ids:
            return set()
        pipe = self.client.pipeline(transaction=False)
        for mid in message_ids:
            pipe.exists(self.keys.tracking_seen(mid))
        return {mid for mid, hit in zip(message_ids, pipe.execute(), strict=True) if hit}

    def _remember(self, actions: Sequence[Action]) -> None:
        """Mark the messages handled and log the ones with no effect (capped stream)."""
        if not actions:
            return
        part_cap = -(-self.cfg.log_maxlen // TRACKING_PARTS)  # the whole log stays ~log_maxlen
        pipe = self.client.pipeline(transaction=False)
        for action in actions:
            pipe.set(self.keys.tracking_seen(action.message_id), 1, ex=self.cfg.seen_ttl_s)
            if action.identify is None:
                entry = json.dumps(action.stored, separators=(",", ":"), default=str)
                pipe.xadd(self.keys.tracking_log(action.message_id), {"m": entry},
                          maxlen=part_cap, approximate=True)  # fmt: skip
        pipe.execute()


def tracking_entries(client: redis.Redis, engine: EngineConfig) -> list[dict[str, object]]:
    """The tracking log's messages, every part, oldest first (by stream id: server time)."""
    rows: list[tuple[tuple[int, ...], Any]] = []
    for key in engine.keys().tracking_logs:
        for entry_id, fields in cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(key)):
            rows.append((tuple(int(x) for x in entry_id.split(b"-")), fields[b"m"]))
    rows.sort(key=lambda row: row[0])
    return [json.loads(raw) for _id, raw in rows]
