"""Retry backoff: exponential, with jitter, up to a maximum."""

from jobs.retry import backoff_seconds


def test_backoff_grows_exponentially_with_jitter_and_a_maximum():
    for retry in range(8):
        delay = min(60.0, 1.0 * 2**retry)
        samples = [backoff_seconds(retry, 1.0, 60.0) for _ in range(200)]
        assert all(delay / 2 <= s <= delay for s in samples)
        assert len(set(samples)) > 1, "jitter must spread retries"
    assert backoff_seconds(20, 1.0, 60.0, jitter=False) == 60.0
