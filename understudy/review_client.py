"""How `understudy review` and `understudy eval` reach the store: the running proxy's admin API,
else the store file itself (the same rule as every other command, `understudy.proxy_client`)."""

from __future__ import annotations

from typing import Any

from understudy.proxy_client import CommandError, StoreAccess


class ReviewAccess(StoreAccess):
    def _direct(self, fn, *, read_only: bool):
        from understudy.routing.evaluation import EvalError
        from understudy.routing.reviews import ReviewError

        def run(store):
            try:
                return fn(store)
            except (ReviewError, EvalError) as exc:
                raise CommandError(str(exc)) from None

        return self._with_store(run, read_only=read_only)

    def invite(self, name: str) -> dict[str, Any]:
        if self.proxy:
            return self._admin("POST", "/review/invite", json={"name": name})
        from understudy.routing.reviews import invite

        token = self._direct(lambda store: invite(store.cursor(), name), read_only=False)
        url = f"http://{self.settings.host}:{self.settings.port}/review?token={token}"
        return {
            "name": name.strip(),
            "token": token,
            "url": url,
            "note": "no proxy runs now: start it (understudy serve)",
        }

    def plan(self, site: str, pairs: int, by: str, shared: int | None, seed: int | None) -> dict[str, Any]:
        body = {"site": site, "pairs": pairs, "by": by, "shared": shared, "seed": seed}
        if self.proxy:
            return self._admin("POST", "/review/plan", json=body)
        from understudy.routing.reviews import draw_plan

        return self._direct(
            lambda store: draw_plan(store.cursor(), site, pairs, by=by, shared=shared, seed=seed), read_only=False
        )

    def set_rubric(self, site: str, rubric: Any) -> dict[str, Any]:
        if self.proxy:
            return self._admin("POST", "/review/rubric", json={"site": site, "rubric": rubric})
        from understudy.routing.reviews import set_rubric

        return self._direct(lambda store: set_rubric(store.cursor(), site, rubric), read_only=False)

    def results(self, site: str) -> dict[str, Any]:
        if self.proxy:
            return self._admin("GET", "/review/results", params={"site": site})
        from understudy.routing.reviews import results

        return self._direct(lambda store: results(store.cursor(), site), read_only=True)

    def export_set(self, site: str) -> dict[str, Any]:
        if self.proxy:
            return self._admin("GET", "/review/export", params={"site": site})
        from understudy.routing.reviews import export_set

        return self._direct(lambda store: export_set(store.cursor(), site), read_only=True)

    def import_set(self, data: Any, reviewer: str | None) -> dict[str, Any]:
        if self.proxy:
            return self._admin("POST", "/review/import", json={"set": data, "reviewer": reviewer})
        from understudy.routing.reviews import import_set

        return self._direct(lambda store: import_set(store.cursor(), data, reviewer), read_only=False)

    def eval_inputs(self, site: str, versions: list[int] | None, limit: int | None) -> dict[str, Any]:
        if self.proxy:
            return self._admin(
                "GET",
                "/eval/inputs",
                params={"site": site, "versions": ",".join(str(v) for v in versions or []), "limit": limit or 0},
            )
        from understudy.routing.evaluation import eval_inputs
        from understudy.validators import ValidatorRegistry

        return self._direct(
            lambda store: eval_inputs(
                store, site, versions, limit=limit, validators=ValidatorRegistry(self.settings.validators)
            ),
            read_only=True,
        )

    def store_eval(self, result: dict[str, Any]) -> str:
        if self.proxy:
            return self._admin("POST", "/eval/runs", json=result)["id"]
        from understudy.routing.evaluation import store_run

        return self._direct(lambda store: store_run(store.cursor(), result), read_only=False)
