"""Webhook delivery: the triggers outbox fanned out into one durable delivery per subscribed
endpoint, claimed atomically, signed per Standard Webhooks and retried with backoff.

payload (pure: bodies and signatures) -> schedule (pure: when to retry) -> transport (one HTTP
POST; errors that know whether to retry) -> outbox (SQL: fan-out, claim) and record (SQL:
outcomes, endpoint health), run in the store's writer -> worker (the loop) ; health (pure: the
failing-endpoint ticket decision) ; ops (queries and operator writes for the CLI and the API).
"""
