"""How the CLI reads and changes the store: through a running proxy, or directly when none runs.

DuckDB admits one writing process, and the proxy holds its file open. So when the data
directory's proxy.json names a live proxy, the CLI asks its admin API; otherwise it
opens the file itself (read-only for reads).
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from understudy.admin_client import AdminClient, CommandError, running_proxy  # noqa: F401 (re-exported)
from understudy.store import SiteNotFound, Store


def _site_path(site: str) -> str:
    """A site reference as one URL path segment (names hold ':' and may hold '/')."""
    if not site.strip():
        raise CommandError("give a site id, name or id prefix (`understudy sites` lists them)")
    return quote(site, safe="")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class StoreAccess(AdminClient):
    """Every CLI read and change: the running proxy's admin API, else the store file itself."""

    def _open(self, read_only: bool) -> Store:
        if not self.settings.shared_store and not self.settings.db_path.exists():
            raise CommandError(
                f"no Understudy store at {self.settings.db_path} (has the proxy run with this --data-dir?)"
            )
        try:
            # A PostgreSQL store is opened for writing even to read: the first open creates its tables.
            return Store.open(self.settings, read_only=read_only and not self.settings.shared_store)
        except OSError as exc:  # store.StoreBusy: another process holds the file; ConnectionError: no server
            raise CommandError(str(exc)) from None

    def sites(self) -> list[dict[str, Any]]:
        if self.proxy:
            return self._admin("GET", "/sites")
        store = self._open(read_only=True)
        try:
            return store.site_summaries()
        finally:
            store.close()

    def calls(self, site: str, limit: int) -> list[dict[str, Any]]:
        if self.proxy:
            return self._admin("GET", f"/sites/{_site_path(site)}/calls", params={"limit": limit})
        store = self._open(read_only=True)
        try:
            return store.recent_calls(site, limit)
        except SiteNotFound as exc:
            raise CommandError(str(exc)) from None
        finally:
            store.close()

    def rename(self, site: str, name: str) -> dict[str, Any]:
        if not name.strip():
            raise CommandError("the new name must not be empty")
        if self.proxy:
            return self._admin("POST", f"/sites/{_site_path(site)}/rename", json={"name": name})
        store = self._open(read_only=False)
        try:
            record = store.rename_site(site, name)
            return {"id": record.id, "name": record.name}
        except (SiteNotFound, ValueError) as exc:
            raise CommandError(str(exc)) from None
        finally:
            store.close()

    def export(
        self, site: str, *, filtered: bool, jsonl: str | None, parquet: str | None, teacher_model: str | None = None
    ) -> dict[str, Any]:
        if self.proxy:
            return self._export_through_proxy(
                site, filtered=filtered, targets={"jsonl": jsonl, "parquet": parquet}, teacher_model=teacher_model
            )
        from understudy.exports import export_site  # the subsystems load only for the command that needs them
        from understudy.validators import ValidatorRegistry

        store = self._open(read_only=True)
        try:
            return export_site(
                store,
                site,
                filtered=filtered,
                jsonl=Path(jsonl) if jsonl else None,
                parquet=Path(parquet) if parquet else None,
                teacher_model=teacher_model,
                validators=ValidatorRegistry(self.settings.validators),
            )
        except SiteNotFound as exc:
            raise CommandError(str(exc)) from None
        finally:
            store.close()

    def _export_through_proxy(
        self, site: str, *, filtered: bool, targets: dict[str, str | None], teacher_model: str | None
    ) -> dict[str, Any]:
        """The proxy writes only inside the data dir: a file wanted elsewhere is staged in
        <data-dir>/exports/ and moved where it was asked for by this (the user's) process."""
        staged: dict[str, tuple[Path, Path]] = {}  # kind -> (staging path, target)
        sent: dict[str, str | None] = {}
        for kind, wanted in targets.items():
            if wanted is None or self.settings.within_data_dir(wanted):
                sent[kind] = wanted
                continue
            stage_dir = self.settings.data_dir / "exports"
            stage_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            stage = stage_dir / f".staging-{secrets.token_hex(6)}.{kind}"
            staged[kind] = (stage, Path(wanted))
            sent[kind] = str(stage.resolve())
        try:
            result = self._admin(
                "POST",
                f"/sites/{_site_path(site)}/export",
                json={"filtered": filtered, **sent, "teacher_model": teacher_model},
            )
            for kind, (stage, target) in staged.items():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(stage, target)
                os.chmod(target, 0o666 & ~_umask())  # the user's file, made as their own tools would make it
                result["files"][kind]["path"] = str(target)
            return result
        finally:
            for stage, _ in staged.values():
                stage.unlink(missing_ok=True)

    # ---- training and versions ----

    def _with_store(self, action, *, read_only: bool):
        store = self._open(read_only=read_only)
        try:
            return action(store)
        except (SiteNotFound, ValueError) as exc:  # training_jobs.NotEnoughData is a ValueError
            raise CommandError(str(exc)) from None
        finally:
            store.close()

    def training_job(
        self, site: str, overrides: dict[str, Any] | None = None, control: str | None = None
    ) -> dict[str, Any]:
        if self.proxy:
            return self._admin(
                "POST", f"/sites/{_site_path(site)}/training-job", json={"config": overrides or {}, "control": control}
            )
        from understudy.training_jobs import job_started, manual_reason, prepare_job

        self.settings.ensure_data_dir()

        def prepare(store):
            job = prepare_job(store, self.settings, site, overrides, control)
            if control != "base":  # a base control is registered at once, nothing is trained
                job_started(store, job, manual_reason(job), "cli")
            return job

        return self._with_store(prepare, read_only=False)

    def register(self, result: dict[str, Any]) -> dict[str, Any]:
        if self.proxy:
            return self._admin("POST", "/versions", json=result)
        from understudy.training_jobs import confine_result, register_result

        try:
            confine_result(result, self.settings)
        except ValueError as exc:  # training_jobs.PathOutsideDataDir
            raise CommandError(str(exc)) from None
        return self._with_store(lambda store: register_result(store, result), read_only=False)

    def versions(self, site: str) -> list[dict[str, Any]]:
        if self.proxy:
            return self._admin("GET", f"/sites/{_site_path(site)}/versions")
        from understudy.routing.registry import list_versions

        return self._with_store(
            lambda store: [v.to_dict() for v in list_versions(store, store.resolve_site(site).id)], read_only=True
        )

    def training_schedule(self, rules: dict[str, Any]) -> dict[str, Any]:
        if self.proxy:
            return self._admin("POST", "/training/schedule", json=rules)
        from understudy.training_jobs import training_schedule

        def schedule(store):
            try:
                return training_schedule(store, rules)
            except ValueError as exc:
                raise CommandError(str(exc)) from None

        return self._with_store(schedule, read_only=True)

    def action(self, site: str, request: dict[str, Any]) -> dict[str, Any]:
        """pin / unpin / rollback / promote (routing.actions), applied by the running proxy at once."""
        if self.proxy:
            return self._admin("POST", f"/sites/{_site_path(site)}/action", json=request)
        from understudy.routing.actions import ActionError, run_action

        def act(store):
            try:
                record = run_action(store, site, request).__dict__
            except ActionError as exc:
                raise CommandError(str(exc)) from None
            if request.get("action") == "policy":
                from understudy.routing.actions import policy_view

                record["policy"] = policy_view(
                    store, record["id"], self.settings.routing_policy, self.settings.sampling_policy
                )
            return record

        return self._with_store(act, read_only=False)

    def policy(self, site: str) -> dict[str, Any]:
        """The site's own policy overrides and the settings in effect."""
        if self.proxy:
            return self._admin("GET", f"/sites/{_site_path(site)}/policy")
        from understudy.routing.actions import policy_view

        def view(store):
            record = store.resolve_site(site)
            return {
                "id": record.id,
                "name": record.name,
                "policy": policy_view(store, record.id, self.settings.routing_policy, self.settings.sampling_policy),
            }

        return self._with_store(view, read_only=True)

    def score(self, request: dict[str, Any], upstream: str, local: str) -> dict[str, Any]:
        """A pair scored as shadow mode scores it (understudy.pair_scoring)."""
        if self.proxy:
            return self._admin("POST", "/score", json={"request": request, "upstream": upstream, "local": local})
        from understudy.pair_scoring import offline_router, score_request

        store = self._open(read_only=True) if self.settings.shared_store or self.settings.db_path.exists() else None
        try:
            return score_request(offline_router(store, self.settings), store, request, upstream, local)
        finally:
            if store is not None:
                store.close()

    def upstreams(self, check: bool) -> dict[str, Any]:
        """The running proxy's routes (and checks made from it), else those these settings give."""
        if self.proxy:
            return self._admin("GET", "/upstreams", params={"check": str(check).lower()}, timeout=120.0)
        import asyncio

        from understudy.proxy.upstream_check import describe_upstreams
        from understudy.proxy.upstreams import UpstreamConfigError, UpstreamTable

        try:
            table = UpstreamTable.from_config(
                self.settings.config,
                self.settings.data_dir,
                self.settings.upstream_url,
                self.settings.upstream_key,
                self.settings.upstream_free,
            )
        except UpstreamConfigError as exc:
            raise CommandError(str(exc)) from None
        return asyncio.run(describe_upstreams(table, check))

    def report(self, site: str | None, fmt: str, *, color: bool = False, width: int = 120) -> str:
        from understudy.reports import render_report

        if self.proxy:
            assert self.proxy is not None
            try:
                response = httpx.get(
                    self.proxy["root"] + "/admin/report",
                    timeout=60,
                    params={"site": site or "", "format": fmt, "color": int(color), "width": width},
                    headers={"authorization": f"Bearer {self.proxy['admin_token']}"},
                )
            except httpx.HTTPError as exc:
                raise CommandError(f"the proxy at {self.proxy['root']} did not answer: {exc}") from None
            if response.status_code >= 400:
                raise CommandError(response.json()["error"]["message"])
            return response.text
        return self._with_store(
            lambda store: render_report(store, self.settings, site, fmt, color=color, width=width), read_only=True
        )
