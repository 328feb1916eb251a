"""The demo's requests: one of each mode, from the example ids an archive's build recorded."""
from __future__ import annotations


def demo_requests(artifact_info: dict) -> list[tuple[str, dict]]:
    """(title, body) for a known user, a history-only user, an unknown user, related items and a
    candidate list; ``artifact_info`` is build_info.json's ``artifact`` section."""
    users = artifact_info.get("example_users") or ["1"]
    items = artifact_info.get("popular_items") or []
    return [
        ("known user", {"user_id": users[0], "k": 5}),
        ("history only (new user)", {"user_id": "demo-new-user", "k": 5,
                                     "history": items[:3] + ["no-such-item"]}),
        ("unknown user, no history (popular fallback)", {"user_id": "demo-anonymous", "k": 5}),
        ("related items", {"similar_to": items[0] if items else "1", "k": 5}),
        ("candidate list for the known user, diversity 0.3",
         {"user_id": users[0], "candidates": items[:6] + ["no-such-item"], "diversity": 0.3}),
    ]
