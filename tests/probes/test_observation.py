"""Sharing: equal details of many observations held once; `like`: a subject's new result
holds its last one's equal detail and data. Nothing else changes."""

from __future__ import annotations

from tocsin.probes.observation import Health, Observation, Sharing, like


def healthy(latency: float, status: int = 200) -> Observation:
    # Built at run time, as unpickled results are: equal, not identical, strings and dicts.
    detail = " ".join(["HTTP", str(status), "in", "3", "ms"])
    url = "".join(["http://10.0.0.5", "/health"])
    return Observation(
        Health.HEALTHY, detail, latency_ms=latency, data={"status": status, "url": url}
    )


def test_equal_details_are_held_once() -> None:
    share = Sharing()
    first, second = share(healthy(3.1)), share(healthy(3.4))
    assert second.detail is first.detail
    assert second.latency_ms == 3.4
    assert second == healthy(3.4)  # the same observation, by value
    other = share(healthy(3.0, status=204))
    assert other.detail == "HTTP 204 in 3 ms"


def test_an_observation_with_nothing_to_share_comes_back_as_it_is() -> None:
    share = Sharing()
    seen = Observation(Health.UNHEALTHY, "timeout after 2 s", error_class="timeout")
    assert share(seen) is seen


def test_it_forgets_everything_past_its_limit() -> None:
    share = Sharing(limit=4)
    kept = share(healthy(1.0))
    for status in range(300, 306):
        share(healthy(1.0, status))
    assert share(healthy(2.0)).detail is not kept.detail  # forgotten, then held anew


def test_a_result_holds_its_subjects_last_detail_and_data_where_equal() -> None:
    last = healthy(3.1)
    again = like(healthy(3.4), last)
    assert again.detail is last.detail
    assert again.data is last.data
    assert again == healthy(3.4)
    changed = like(healthy(3.0, status=503), last)
    assert changed.data == {"status": 503, "url": "http://10.0.0.5/health"}
    assert changed.data is not last.data
    first = healthy(1.0)
    assert like(first, None) is first
