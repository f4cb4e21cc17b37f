"""What the pages need to know of the config, per org: its spaces, which space each subject is
in, the subjects people can report about, its webhook endpoints and its sign-in users.

Built on first use after a start or a reload (a site of 100,000 subjects pays for it only when
someone opens a page), from the same helpers the monitor uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tocsin.api.errors import ApiError
from tocsin.config import Settings
from tocsin.monitor.config import spaces_of


@dataclass(frozen=True)
class SubjectRef:
    type: str
    id: str
    name: str
    space: str | None  # the space's id

    @property
    def ref(self) -> str:
        """How a form names it: "device:lobby-cam-1"."""
        return f"{self.type}:{self.id}"


@dataclass
class OrgSite:
    slug: str
    name: str
    spaces: dict[str, str] = field(default_factory=dict)  # id -> name, config order
    parents: dict[str, str] = field(default_factory=dict)  # space id -> the space it is in
    subjects: dict[tuple[str, str], SubjectRef] = field(default_factory=dict)  # (type, id) ->
    webhooks: list[str] = field(default_factory=list)

    def space_name(self, space_id: str | None) -> str | None:
        return None if space_id is None else self.spaces.get(space_id, space_id)

    def space_of(self, kind: str, ident: str) -> str | None:
        """The id of the space a subject is in (a space: itself), if the config says one."""
        ref = self.subjects.get((kind, ident))
        return ref.space if ref is not None else None

    def in_space(self, space_id: str) -> list[SubjectRef]:
        """The space itself and every subject in it or in a space inside it (a floor's
        rooms)."""
        inside = {space_id}
        grew = True
        while grew:  # spaces have no cycles (the config refuses them)
            more = {child for child, parent in self.parents.items() if parent in inside}
            grew = not more <= inside
            inside |= more
        return [ref for ref in self.subjects.values() if ref.space in inside]


def build(settings: Settings) -> dict[str, OrgSite]:
    config = settings.config
    sites = {org.slug: OrgSite(org.slug, org.name) for org in config.orgs}
    for key, info in spaces_of(config.spaces, config.devices).items():
        site = sites.get(key.org)
        if site is not None:
            site.spaces[key.id] = info.name
            if info.parent is not None:
                site.parents[key.id] = info.parent.id
            site.subjects[("space", key.id)] = SubjectRef("space", key.id, info.name, key.id)
    for device in config.devices:
        site = sites.get(device.org)
        if site is not None:
            site.subjects[("device", device.id)] = SubjectRef(
                "device", device.id, device.name, device.space
            )
    for integration in config.integrations:
        site = sites.get(integration.org)
        if site is not None:
            site.subjects[("integration", integration.id)] = SubjectRef(
                "integration", integration.id, integration.name, None
            )
    for webhook in config.webhooks:
        for slug in webhook.orgs or list(sites):
            if slug in sites:
                sites[slug].webhooks.append(webhook.name)
    return sites


class Site:
    """The config's view for pages; `reload` drops it, the next page builds it again."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._orgs: dict[str, OrgSite] | None = None

    def reload(self, settings: Settings) -> None:
        self.settings, self._orgs = settings, None

    def org(self, slug: str) -> OrgSite:
        """The org's view; a 404 once a reload removed the org (a session of it may remain)."""
        if self._orgs is None:
            self._orgs = build(self.settings)
        site = self._orgs.get(slug)
        if site is None:
            raise ApiError(404, "org_not_found", f"no org {slug!r}", "org")
        return site
