"""Key names of the recommendation engine, built on `app.core.keys.Keys` (same prefix, same tags).

Lua never builds key names: every Function receives its keys from these builders. One hash tag
per entity keeps each Function call in one cluster slot:

  user        `u:{<user>}:hist`, `u:{<user>}:recs:<surface>`, `u:{<user>}:peers:<model>`
  item        `i:{<item>}:nn:<model>`, `i:{<item>}:cn:<model>`         (with the item's keys)
  global      `g:{g}:rec:*`, `g:{g}:exp:defs`                          (with the global keys)
  split       `g:{g<i>.<k>}:rec:hot` (cluster: real-time popularity in `hot_shards` parts by item
              hash; tags from app/core/tags.py spread the parts evenly over the masters)
  experiment  `x:{<experiment>}:n`, `x:{<experiment>}:log`, `x:{<experiment>}:ts:<variant>:<metric>`

See docs/recommendations.md for types, bounds and TTLs.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from app.core.keys import Keys, tag
from app.core.tags import spread_tag

# Model versions and variant/metric names appear in key names outside any hash tag.
NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,48}$")
SURFACES = ("home", "product", "cart")
CACHED_SURFACES = ("home", "cart")
METRICS = ("exposures", "clicks", "carts", "purchases", "revenue")


def hot_shard_of(item: str, n: int) -> int:
    """Which part of the split real-time popularity holds `item` (stable across processes)."""
    return zlib.crc32(item.encode()) % n if n > 1 else 0


def _name(value: str, what: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(f"{what} must be 1-48 characters of letters, digits or ._-: {value!r}")
    return value


@dataclass(frozen=True)
class RecKeys(Keys):
    # -- user slot ------------------------------------------------------------------------
    def hist(self, user: str) -> str:
        """ZSET item -> forward-decayed interest (long-term item history), capped."""
        return self.user(user, "hist")

    def recs(self, user: str, surface: str) -> str:
        """STRING (JSON): the precomputed / last-known-good list of one cached surface."""
        if surface not in CACHED_SURFACES:
            raise ValueError(f"surface {surface!r} has no cached list")
        return self.user(user, f"recs:{surface}")

    def peers(self, user: str, model: str) -> str:
        """ZSET shopper -> similarity: the user's similar shoppers (trainer, one model version)."""
        return self.user(user, f"peers:{_name(model, 'model version')}")

    def rec_context_keys(self, user: str) -> list[str]:
        """KEYS of `rec_context`: session, hist, aff, seen."""
        return [self.user(user, "session"), self.hist(user), self.user(user, "aff"),
                self.user(user, "seen")]  # fmt: skip

    def recommend_keys(self, user: str) -> list[str]:
        """KEYS of `recommend`: session, hist, aff, seen, profile."""
        return [*self.rec_context_keys(user), self.user(user, "profile")]

    # -- item slots ----------------------------------------------------------------------
    def nn(self, item: str, model: str) -> str:
        """ZSET neighbour -> collaborative similarity (trainer, one model version)."""
        return self.item(item, f"nn:{_name(model, 'model version')}")

    def cn(self, item: str, model: str) -> str:
        """ZSET neighbour -> content (vector) similarity (trainer, one model version)."""
        return self.item(item, f"cn:{_name(model, 'model version')}")

    # -- global slot ---------------------------------------------------------------------
    @property
    def model_pointer(self) -> str:
        """STRING: the current model version (flipped after a version is fully written)."""
        return self.glob("rec:model")

    @property
    def models(self) -> str:
        """HASH version -> JSON description of each model version still kept."""
        return self.glob("rec:models")

    def popular(self, model: str) -> str:
        """ZSET item -> popularity in the model's training data (top N)."""
        return self.glob(f"rec:pop:{_name(model, 'model version')}")

    def category_top(self, model: str, category: str) -> str:
        """ZSET item -> popularity within one category (top N)."""
        return self.glob(f"rec:cat:{_name(model, 'model version')}:{_name(category, 'category')}")

    @property
    def hot(self) -> str:
        """ZSET item -> real-time popularity, forward-decayed (capped)."""
        return self.glob("rec:hot")

    def hot_shards(self, n: int) -> list[str]:
        """`hot` split n ways by item hash (`hot_shard_of`), one hash tag per part, so that on a
        cluster the per-batch writes spread over the masters; n <= 1: the one global key."""
        if n <= 1:
            return [self.hot]
        return [f"{self.prefix}g:{tag(spread_tag('g', i, n))}:rec:hot" for i in range(n)]

    @property
    def rec_stats(self) -> str:
        """HASH: serving counters (cache hits, inline, fallbacks by kind and reason)."""
        return self.glob("rec:stats")

    @property
    def experiments(self) -> str:
        """HASH experiment id -> JSON definition (capped)."""
        return self.glob("exp:defs")

    # -- experiment slot -----------------------------------------------------------------
    def exp(self, experiment: str, part: str) -> str:
        return f"{self.prefix}x:{tag(experiment)}:{part}"

    def exp_counts(self, experiment: str) -> str:
        """HASH `<variant>:<metric>` -> total."""
        return self.exp(experiment, "n")

    def exp_log(self, experiment: str) -> str:
        """STREAM of exposures (rec_id, user, variant, surface, items), MAXLEN ~."""
        return self.exp(experiment, "log")

    def exp_series(self, experiment: str, variant: str, metric: str) -> str:
        """TS of one variant's metric, per-minute sums."""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}")
        return self.exp(experiment, f"ts:{_name(variant, 'variant')}:{metric}")
