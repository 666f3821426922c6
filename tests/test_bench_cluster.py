"""bench/cluster.py's key families: a family is a key with its hash tag and entity id hidden, so
"a family on one master only" names real layout problems, not one item's keys."""

from __future__ import annotations

import pytest

from app.core.keys import Keys
from bench.cluster import family


@pytest.mark.parametrize(
    ("key", "want"),
    [
        ("i:{a3.7}:10002:co:b", "i:{*}:*:co:b"),
        ("i:{a3.7}:10002:ts:view:1h", "i:{*}:*:ts:view:1h"),
        ("u:{p5.1}:c123:recs:home", "u:{*}:*:recs:home"),
        ("u:{p5.1}:anon:x7:session", "u:{*}:*:session"),
        ("u:{p5.1}:c12:peers:v20261204", "u:{*}:*:peers:<model>"),
        ("i:{85123A}:nn:v20261204", "i:{*}:nn:<model>"),
        ("g:{g2.5}:rec:hot", "g:{*}:rec:hot"),
        ("g:{g}:rec:model", "g:{g}:rec:model"),
        ("log:{p3.1}", "log:{*}"),
        ("part:{p3.1}:agg_lease", "part:{*}:agg_lease"),
    ],
)
def test_families_hide_the_tag_and_the_entity(key: str, want: str) -> None:
    assert family(key) == want


def test_families_of_the_real_key_builders() -> None:
    keys = Keys("")
    assert family(keys.co("10002", "b")) == "i:{*}:*:co:b"
    assert family(keys.user("anon:x7", "session")) == "u:{*}:*:session"
    assert family(keys.user("c12346", "dedup")) == "u:{*}:*:dedup"
    assert family(keys.trend(3, "view", 1_764_806_400_000)) == "g:{*}:trend:view:<t>"
    assert family(keys.log_of(17)) == "log:{*}"
