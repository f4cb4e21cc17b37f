"""Webhook delivery: the triggers outbox fanned out into one durable delivery per subscribed
endpoint, claimed atomically, signed per Standard Webhooks and retried with backoff.

payload (pure: bodies and signatures) -> schedule (pure: when to retry) -> transport (one
HTTP POST, errors that know whether to retry) -> outbox (SQL run in the store's writer) ->
worker (the loop: fan out, claim, send, record, endpoint health) ; ops (queries for the CLI
and the API).
"""
