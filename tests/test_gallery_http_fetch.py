"""The shared retry loop and session handling of gallery HTTP fetches (transfers are in test_gallery_download)."""

from __future__ import annotations

import pytest
import requests

from localai_sd.errors import Cancelled, GalleryError
from localai_sd.gallery.http_fetch import DownloadPolicy, TransientError, retry_transient, session_scope

FAST = DownloadPolicy(retries=2, backoff_base=0.0, backoff_max=0.0)


def flaky(failures: int, calls: list[int]) -> int:
    """Fail transiently ``failures`` times, then return the number of calls."""
    calls.append(1)
    if len(calls) <= failures:
        raise TransientError(f"failure {len(calls)}")
    return len(calls)


def test_retry_transient_succeeds_within_the_retry_budget() -> None:
    calls: list[int] = []
    result = retry_transient(lambda: flaky(2, calls), FAST, None, "doc", lambda n, e: GalleryError(str(e)))
    assert result == 3


def test_retry_transient_gives_up_with_the_attempt_count_and_last_error() -> None:
    calls: list[int] = []
    with pytest.raises(GalleryError, match="3 attempts: failure 3"):
        retry_transient(
            lambda: flaky(5, calls), FAST, None, "doc", lambda n, e: GalleryError(f"{n} attempts: {e}")
        )
    assert len(calls) == 3


def test_retry_transient_stops_when_cancelled() -> None:
    calls: list[int] = []
    with pytest.raises(Cancelled):
        retry_transient(lambda: flaky(5, calls), FAST, lambda: True, "doc", lambda n, e: GalleryError(str(e)))
    assert calls == []


def test_session_scope_keeps_a_given_session_and_makes_one_otherwise() -> None:
    given = requests.Session()
    with session_scope(given) as used:
        assert used is given
    with session_scope(None) as made:
        assert isinstance(made, requests.Session) and made is not given
    given.close()
