"""The proxy's in-memory view of call sites, so the request path never reads the database.

Loaded from the store at start-up; a site seen for the first time is added here at once
and its row goes to the recorder's next group commit. Names improve as better evidence
arrives (a `jac_caller_name` beats a docstring slug) but a name a user gave is kept.

Explicit tags. The byLLM plugin's `<module>.<qualname>` (marked as the plugin's) keeps
continuity with calls recorded before the plugin was installed: the first request with a new
plugin tag whose untagged signature is an existing site that no tag has claimed yet joins
that site (the tag names it from then on); otherwise the tag gets a site of its own. So a
site's history stays with it when the plugin is installed, and twins (one signature, two
tags) split from the first tagged call on: the first tag keeps the history, the second
starts fresh. A tag a person sets by hand (`X-Understudy-Site: my-site`) never takes over
history: it joins the site already called by that name, else gets a new site of its own,
and untagged calls of the same signature stay where they were.

Conversations: a retry or tool step takes the site its conversation's first turn got
(`Identification.conversation` leaves out the offered tools), remembered for the last
`CONVERSATION_MEMORY` conversations and reloaded from the store's recent first turns at
start-up, so a tool loop whose last step offers only `finish_tool` stays on its site.

Bounded. A generic client whose system prompt changes per request (a date, a user's name, a
retrieved document) makes a new signature per call; unbounded, every one is a site held here
and a row in the store. So at most `max_generic_sites` generic sites are made; past that a new
generic signature joins its shape's overflow site: one per response schema and tool names (a
site the same task would get, whatever the prompt said), kind `overflow`, at most
`MAX_OVERFLOW_SHAPES` of them, then one catch-all. Known sites keep their own calls: the cap
only stops new ones.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime

from understudy.proxy.callsite import Identification, Signature
from understudy.rows import SiteRow
from understudy.store import SiteRecord

# Higher wins when a site's name is re-derived; "user" (a rename) is never replaced.
_NAME_RANK = {"system": 0, "docstring": 1, "function": 2, "caller": 3, "explicit": 4, "user": 5}
CONVERSATION_MEMORY = 10_000  # conversations whose site a later turn can inherit
MAX_OVERFLOW_SHAPES = 100  # overflow sites (one per schema + tools); beyond, one catch-all
OVERFLOW_KIND = "overflow"


class SiteRegistry:
    def __init__(
        self,
        records: list[SiteRecord],
        tags: dict[str, str] | None = None,
        conversations: list[tuple[str, str]] | None = None,
        *,
        max_generic_sites: int | None = None,
        generic_sites: int = 0,
        overflow_sites: int = 0,
        mask: Callable[[str], str] | None = None,
    ):
        self._sites: dict[str, SiteRecord] = {record.id: record for record in records}
        self.max_generic_sites = max_generic_sites  # None: unbounded
        self._generic = generic_sites  # generic sites made so far (the store's count at start-up)
        self._overflow = overflow_sites
        # Credentials masked out of what a site row keeps of its prompt (system text, header) and
        # of the names derived from it, before a slug could keep part of a key (call_record.mask_text).
        self._mask = mask or (lambda text: text)
        self._tags: dict[str, str] = dict(tags or {})  # tag -> site id
        self._conversations: OrderedDict[str, str] = OrderedDict(conversations or [])  # conversation -> site id
        self._lock = threading.Lock()

    def get(self, site_id: str) -> SiteRecord | None:
        return self._sites.get(site_id)

    def all(self) -> list[SiteRecord]:
        return list(self._sites.values())

    def observe(self, ident: Identification) -> tuple[SiteRecord, SiteRow | None, tuple[str, str, str] | None]:
        """The site for this request, plus a new `sites` row and/or a name update to persist.

        For a tagged request the returned record's id may differ from `ident.site_id` (the tag
        joined an existing site); a claim comes back as a name update with source "claim". A
        later turn of a known conversation gets its first turn's site.
        """
        if ident.turn != "first":
            inherited = self._conversations.get(ident.conversation)
            if inherited is not None and inherited in self._sites:
                return self._sites[inherited], None, None
        record, row, name_update = self._observe(ident)
        with self._lock:
            self._conversations[ident.conversation] = record.id
            self._conversations.move_to_end(ident.conversation)
            if len(self._conversations) > CONVERSATION_MEMORY:
                self._conversations.popitem(last=False)
        return record, row, name_update

    def _observe(self, ident: Identification) -> tuple[SiteRecord, SiteRow | None, tuple[str, str, str] | None]:
        tag = ident.signature.tag
        if tag is not None:
            claimed = self._tags.get(tag)
            if claimed is not None:
                return self._sites[claimed], None, None
            with self._lock:
                claimed = self._tags.get(tag)
                if claimed is not None:
                    return self._sites[claimed], None, None
                if not ident.signature.tag_from_plugin:
                    named = [r for r in self._sites.values() if r.name == tag]
                    if len(named) == 1:  # the site a person already gave this name (a rename)
                        self._tags[tag] = named[0].id
                        return named[0], None, (named[0].id, tag, "tag")
                untagged = self._sites.get(ident.signature.untagged_site_id)
                if ident.signature.tag_from_plugin and untagged is not None and untagged.id not in self._tags.values():
                    self._tags[tag] = untagged.id
                    claimed_site = (
                        untagged
                        if untagged.name_source == "user"
                        else SiteRecord(
                            untagged.id, tag, "explicit", untagged.state, untagged.pinned, untagged.active_version
                        )
                    )
                    self._sites[untagged.id] = claimed_site
                    return claimed_site, None, (untagged.id, tag, "claim")
                self._tags[tag] = ident.site_id
        record = self._sites.get(ident.site_id)
        if record is not None and (ident.caller_name is None or record.name_source == "caller"):
            return record, None, None  # the common case: known site, nothing to learn
        name, source = self._default_name(ident)
        with self._lock:
            record = self._sites.get(ident.site_id)
            if record is None and ident.signature.kind == "generic" and ident.signature.tag is None:
                if self.max_generic_sites is not None and self._generic >= self.max_generic_sites:
                    return self._overflow_site(ident.signature)
                self._generic += 1
            if record is None:
                record = SiteRecord(ident.site_id, name, source, "learning", None, None)
                self._sites[ident.site_id] = record
                return record, _site_row(ident, name, source, self._mask), None
            if _NAME_RANK[source] > _NAME_RANK.get(record.name_source, 0):
                record = SiteRecord(record.id, name, source, record.state, record.pinned, record.active_version)
                self._sites[ident.site_id] = record
                return record, None, (record.id, name, source)
            return record, None, None

    def replace(self, record: SiteRecord) -> None:
        with self._lock:
            self._sites[record.id] = record

    def _default_name(self, ident: Identification) -> tuple[str, str]:
        sig = ident.signature
        masked = dataclasses.replace(
            sig,
            system_text=self._mask(sig.system_text),
            header=self._mask(sig.header) if sig.header else sig.header,
            tag=self._mask(sig.tag) if sig.tag else sig.tag,
        )
        return masked.default_name(self._mask(ident.caller_name) if ident.caller_name else None)

    def _overflow_site(self, sig: Signature) -> tuple[SiteRecord, SiteRow | None, None]:
        """The overflow site of this signature's shape (called holding the lock)."""
        shape = Signature(
            kind=OVERFLOW_KIND,
            system_text="",
            header=None,
            arg_names=(),
            schema_name=sig.schema_name,
            schema_digest=sig.schema_digest,
            tool_names=sig.tool_names,
            temperature=None,
        )
        site_id = shape.untagged_site_id
        if site_id not in self._sites and self._overflow >= MAX_OVERFLOW_SHAPES:
            shape = Signature(
                kind=OVERFLOW_KIND,
                system_text="",
                header=None,
                arg_names=(),
                schema_name=None,
                schema_digest="*",
                tool_names=(),
                temperature=None,
            )
            site_id = shape.untagged_site_id
        record = self._sites.get(site_id)
        if record is not None:
            return record, None, None
        self._overflow += 1
        if shape.schema_digest == "*":
            name = "overflow:other"
        else:
            name = f"overflow:{sig.schema_name or 'str'}" + (f"+{','.join(sig.tool_names)}" if sig.tool_names else "")
        record = SiteRecord(site_id, name, "system", "learning", None, None)
        self._sites[site_id] = record
        return record, _shape_row(site_id, name, shape), None


def _shape_row(site_id: str, name: str, shape: Signature) -> SiteRow:
    return SiteRow(
        id=site_id,
        name=name,
        name_source="system",
        kind=OVERFLOW_KIND,
        system_text="",
        header=None,
        arg_names=[],
        schema_name=shape.schema_name,
        tool_names=list(shape.tool_names),
        temperature=None,
        created_at=datetime.now(UTC),
    )


def _site_row(ident: Identification, name: str, source: str, mask: Callable[[str], str]) -> SiteRow:
    sig = ident.signature
    return SiteRow(
        id=ident.site_id,
        name=name,
        name_source=source,
        kind="explicit" if sig.tag else sig.kind,
        system_text=mask(sig.system_text),
        header=mask(sig.header) if sig.header else sig.header,
        arg_names=list(sig.arg_names),
        schema_name=sig.schema_name,
        tool_names=list(sig.tool_names),
        temperature=sig.temperature,
        created_at=datetime.now(UTC),
        tag=mask(sig.tag) if sig.tag else sig.tag,
    )
