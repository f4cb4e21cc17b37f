"""The configured endpoints and delivery settings, as the worker and the CLI use them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from tocsin.delivery.payload import Format
from tocsin.delivery.schedule import RetryPolicy

if TYPE_CHECKING:  # the delivery process unpickles these without the config's imports
    from tocsin.config import Settings, WebhookConfig


@dataclass(frozen=True)
class Endpoint:
    """One [[webhooks]] entry with its orgs resolved and its keys read. The URL, keys and
    headers are kept out of repr: chat webhook URLs and extra headers are often secrets."""

    name: str
    url: str = field(repr=False)
    orgs: frozenset[str]
    triggers: frozenset[str]
    keys: tuple[bytes, ...] = field(repr=False)
    headers: Mapping[str, str] = field(repr=False, default_factory=dict)
    timeout: timedelta = timedelta(seconds=15)
    format: Format = "standard"

    def wants(self, org: str, trigger_type: str) -> bool:
        return org in self.orgs and trigger_type in self.triggers


@dataclass(frozen=True)
class DeliverySettings:
    policy: RetryPolicy
    disable_after: timedelta
    ticket_after: timedelta
    reopen_window: timedelta
    concurrency: int
    per_endpoint_concurrency: int
    poll_interval: timedelta
    lease: timedelta
    base_url: str


def endpoint_from_config(
    hook: WebhookConfig, keys: tuple[bytes, ...], all_orgs: frozenset[str]
) -> Endpoint:
    return Endpoint(
        name=hook.name,
        url=hook.url,
        orgs=frozenset(hook.orgs) if hook.orgs else all_orgs,
        triggers=frozenset(hook.triggers),
        keys=keys,
        headers=dict(hook.headers),
        timeout=hook.timeout,
        format=hook.format,
    )


def endpoints_from(settings: Settings) -> tuple[Endpoint, ...]:
    all_orgs = frozenset(o.slug for o in settings.config.orgs)
    return tuple(
        endpoint_from_config(hook, settings.webhook_keys.get(hook.name, ()), all_orgs)
        for hook in settings.config.webhooks
    )


def delivery_settings(settings: Settings) -> DeliverySettings:
    config = settings.config
    delivery = config.webhook_delivery
    return DeliverySettings(
        policy=RetryPolicy(tuple(delivery.schedule), delivery.jitter),
        disable_after=delivery.disable_after,
        ticket_after=(
            delivery.ticket_after if delivery.ticket_after is not None else config.monitor.debounce
        ),
        reopen_window=config.monitor.reopen_window,
        concurrency=delivery.concurrency,
        per_endpoint_concurrency=delivery.per_endpoint_concurrency,
        poll_interval=delivery.poll_interval,
        lease=delivery.lease,
        base_url=config.server.base_url,
    )
