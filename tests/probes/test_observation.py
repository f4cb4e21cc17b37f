"""Sharing: equal details and data of many observations held once, nothing else changed."""

from __future__ import annotations

from tocsin.probes.observation import Health, Observation, Sharing


def healthy(latency: float, status: int = 200) -> Observation:
    # Built at run time, as unpickled results are: equal, not identical, strings and dicts.
    detail = " ".join(["HTTP", str(status), "in", "3", "ms"])
    return Observation(Health.HEALTHY, detail, latency_ms=latency, data={"status": status})


def test_equal_details_and_data_are_held_once() -> None:
    share = Sharing()
    first, second = share(healthy(3.1)), share(healthy(3.4))
    assert second.detail is first.detail
    assert second.data is first.data
    assert second.latency_ms == 3.4
    assert second == healthy(3.4)  # the same observation, by value
    other = share(healthy(3.0, status=204))
    assert other.data == {"status": 204}
    assert other.data is not first.data


def test_an_observation_with_nothing_to_share_comes_back_as_it_is() -> None:
    share = Sharing()
    seen = Observation(Health.UNHEALTHY, "timeout after 2 s", error_class="timeout")
    assert share(seen) is seen
    odd = Observation(Health.HEALTHY, "ok", data={"at": object()})  # not JSON: not shared
    assert share(odd).data is odd.data


def test_it_forgets_everything_past_its_limit() -> None:
    share = Sharing(limit=4)
    kept = share(healthy(1.0))
    for status in range(300, 306):
        share(healthy(1.0, status))
    assert share(healthy(2.0)).data is not kept.data  # forgotten, then held anew
