"""Apply translated Segment / RudderStack messages (app/ingest/segment.py) to Redis, in order.

Engine events go through the engine's `Ingestor` (every hook, dedup by messageId); an identify
or alias goes through `users.identify` (traits + merge of the anonymous id). Events queued
before an identify are ingested first, so a batch "anonymous views, identify, more views"
merges exactly what came before it. Messages with no engine event are appended to a capped
tracking log; their messageIds are remembered `seen_ttl_s` (a retried batch is a duplicate).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from app.core.errors import FunctionError
from app.core.events import Event
from app.core.keys import Keys
from app.core.settings import EngineConfig
from app.ingest import users
from app.ingest.ingestor import Ingestor
from app.ingest.segment import Action, TrackingConfig


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
        self.keys = Keys(engine.key_prefix)

    def apply(self, actions: Sequence[Action]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(actions)
        others = [i for i, a in enumerate(actions) if a.event is None]
        seen = self._seen([actions[i].message_id for i in others])
        pending: list[tuple[int, Event]] = []

        def flush() -> None:
            if pending:
                report = self.ingestor.ingest([ev for _, ev in pending])
                for (i, _), status in zip(pending, report.statuses, strict=True):
                    outcomes[i] = Outcome(status)
                pending.clear()

        done: list[int] = []
        for i, action in enumerate(actions):
            if action.event is not None:
                pending.append((i, action.event))
            elif action.message_id in seen:
                outcomes[i] = Outcome("duplicate")
            elif action.identify is not None:
                flush()
                outcomes[i] = self._identify(action)
                if outcomes[i] == Outcome("accepted"):
                    done.append(i)
            else:
                outcomes[i] = Outcome("accepted")
                done.append(i)
        flush()
        self._remember([actions[i] for i in done])
        return [o or Outcome("rejected", "not processed") for o in outcomes]

    def _identify(self, action: Action) -> Outcome:
        ident = action.identify
        assert ident is not None
        try:
            users.identify(self.client, self.engine, ident.user_id, ident.anonymous_id,
                           ident.traits)  # fmt: skip
        except FunctionError as exc:  # the Function refused this input (nothing written)
            return Outcome("rejected", str(exc))
        return Outcome("accepted")

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
        pipe = self.client.pipeline(transaction=False)
        for action in actions:
            pipe.set(self.keys.tracking_seen(action.message_id), 1, ex=self.cfg.seen_ttl_s)
            if action.identify is None:
                entry = json.dumps(action.stored, separators=(",", ":"), default=str)
                pipe.xadd(self.keys.tracking_log, {"m": entry},
                          maxlen=self.cfg.log_maxlen, approximate=True)  # fmt: skip
        pipe.execute()
