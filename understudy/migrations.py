"""Numbered, never-edited schema steps for the DuckDB store.

Each step is a function registered in order by `@migration`; `migrate(con)` applies the
ones not yet recorded in `_migrations` and records them. To change the schema, add a new
step at the bottom; never edit one that has shipped (a user's file already ran it).
"""

from __future__ import annotations

from collections.abc import Callable

from understudy.db import Cursor, transaction

MIGRATIONS: list[tuple[str, Callable[[Cursor], None]]] = []


def migration(fn: Callable[[Cursor], None]):
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_calls_and_sites(con: Cursor) -> None:
    con.execute(
        """
        CREATE TABLE sites (
            id VARCHAR PRIMARY KEY,          -- short hash of the signature (or an explicit tag)
            name VARCHAR NOT NULL,           -- readable, renamable
            name_source VARCHAR NOT NULL,    -- caller | function | docstring | explicit | user
            kind VARCHAR NOT NULL,           -- byllm | generic | explicit
            system_text VARCHAR,
            header VARCHAR,
            arg_names VARCHAR[],
            schema_name VARCHAR,
            tool_names VARCHAR[],
            temperature DOUBLE,
            state VARCHAR NOT NULL DEFAULT 'learning',
            pinned VARCHAR,
            active_version INTEGER,
            created_at TIMESTAMPTZ NOT NULL
        )
        """
    )
    con.execute(
        """
        CREATE TABLE calls (
            id VARCHAR PRIMARY KEY,
            ts TIMESTAMPTZ NOT NULL,
            site_id VARCHAR NOT NULL,
            model VARCHAR,
            served_by VARCHAR NOT NULL,      -- upstream | local:<site>@v<N>
            stream BOOLEAN NOT NULL,
            turn VARCHAR NOT NULL,           -- first | retry | tool_step
            conversation VARCHAR NOT NULL,   -- same for a first turn and its retries / tool steps
            retry_of VARCHAR,                -- the call whose output a retry corrects
            request JSON NOT NULL,           -- the body as the client sent it, credentials removed
            response JSON,                   -- the upstream body; for streams the reassembled completion
            status INTEGER NOT NULL,
            error VARCHAR,
            latency_ms DOUBLE NOT NULL,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            cost_usd DOUBLE,
            valid BOOLEAN                    -- typed output parsed against its schema; NULL when untyped
        )
        """
    )
    con.execute("CREATE INDEX calls_site_ts ON calls (site_id, ts)")


@migration
def m002_versions_shadow_audit(con: Cursor) -> None:
    con.execute(
        """
        CREATE TABLE model_versions (
            site_id VARCHAR NOT NULL,
            version INTEGER NOT NULL,        -- 1, 2, ... per site
            status VARCHAR NOT NULL,         -- ready | rejected | failed | active | retired
            base_model VARCHAR,              -- what training loaded (HF dir / hub id / GGUF)
            base_gguf VARCHAR,               -- what serving loads
            adapter_path VARCHAR,            -- the GGUF LoRA adapter
            dataset_snapshot VARCHAR,        -- the Parquet file trained on (content-named)
            config JSON,                     -- TrainConfig
            metrics JSON,                    -- eval loss, held-out exact / parse-valid / validator rates, timings
            note VARCHAR,                    -- why rejected / failed
            created_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (site_id, version)
        )
        """
    )
    con.execute(
        """
        CREATE TABLE shadow_results (
            call_id VARCHAR NOT NULL,        -- the upstream call this local answer shadowed
            site_id VARCHAR NOT NULL,
            version INTEGER NOT NULL,
            ts TIMESTAMPTZ NOT NULL,
            score DOUBLE NOT NULL,           -- agreement in [0, 1]
            components JSON NOT NULL,        -- parse_valid, structural, semantic, validator ...
            comparable BOOLEAN NOT NULL,     -- false when the upstream answer itself was unusable
            local_valid BOOLEAN NOT NULL,
            local_latency_ms DOUBLE,
            upstream_latency_ms DOUBLE,
            local_output VARCHAR
        )
        """
    )
    con.execute("CREATE INDEX shadow_site_version ON shadow_results (site_id, version, ts)")
    con.execute(
        """
        CREATE TABLE audit (
            ts TIMESTAMPTZ NOT NULL,
            site_id VARCHAR NOT NULL,
            action VARCHAR NOT NULL,         -- pin | unpin | promote | rollback | demote | state | version
            detail JSON,
            actor VARCHAR NOT NULL           -- cli | policy | worker
        )
        """
    )
    con.execute("ALTER TABLE sites ADD COLUMN policy JSON")  # per-site overrides of routing thresholds


@migration
def m003_call_provider(con: Cursor) -> None:
    # `model` stays what the client asked for (maybe an alias); these say who really answered.
    con.execute("ALTER TABLE calls ADD COLUMN provider VARCHAR")
    con.execute("ALTER TABLE calls ADD COLUMN upstream_model VARCHAR")


@migration
def m004_site_tags(con: Cursor) -> None:
    # The explicit tag (plugin's `<module>.<qualname>`, X-Understudy-Site) that names a site.
    con.execute("ALTER TABLE sites ADD COLUMN tag VARCHAR")


@migration
def m005_judging_against_the_teacher(con: Cursor) -> None:
    # Extra upstream calls the proxy makes itself are calls too (cost, tokens, training data).
    con.execute("ALTER TABLE calls ADD COLUMN purpose VARCHAR DEFAULT 'client'")  # client | drift | self_check
    # Shadow results carry the pair's other half of the validity comparison, the phase they
    # were taken in (shadow, or drift checks while local) and the local model's confidence.
    con.execute("ALTER TABLE shadow_results ADD COLUMN upstream_valid BOOLEAN")
    con.execute("ALTER TABLE shadow_results ADD COLUMN phase VARCHAR DEFAULT 'shadow'")  # shadow | drift
    con.execute("ALTER TABLE shadow_results ADD COLUMN local_confidence DOUBLE")
    # The teacher's self-agreement: a second upstream answer to a request scored against the first.
    con.execute(
        """
        CREATE TABLE self_agreement (
            call_id VARCHAR NOT NULL,        -- the client's call (the first answer)
            second_call_id VARCHAR NOT NULL, -- the proxy's second upstream call for the same request
            site_id VARCHAR NOT NULL,
            ts TIMESTAMPTZ NOT NULL,
            score DOUBLE NOT NULL,           -- agreement of the second answer with the first, in [0, 1]
            components JSON NOT NULL,
            comparable BOOLEAN NOT NULL,     -- false when the first answer was itself unusable
            first_valid BOOLEAN,
            second_valid BOOLEAN
        )
        """
    )
    con.execute("CREATE INDEX self_agreement_site_ts ON self_agreement (site_id, ts)")
    con.execute("ALTER TABLE sites ADD COLUMN state_since TIMESTAMPTZ")  # evidence counts from here
    con.execute("ALTER TABLE model_versions ADD COLUMN control VARCHAR")  # NULL | base | shuffled


@migration
def m006_reviews_and_evals(con: Cursor) -> None:
    # Blind human review (reporting.reviews): the pairs drawn by a plan, each side's place fixed
    # at draw time so every reviewer sees the same blind order and the store knows which was which.
    con.execute(
        """
        CREATE TABLE review_items (
            id VARCHAR PRIMARY KEY,
            site_id VARCHAR NOT NULL,
            plan_id VARCHAR NOT NULL,
            call_id VARCHAR NOT NULL,        -- the upstream call whose input both answers share
            version INTEGER NOT NULL,        -- the local version beside it
            stratum VARCHAR NOT NULL,        -- what the plan stratified by, e.g. "version=2" or "difficulty=3"
            local_side VARCHAR NOT NULL,     -- A | B, drawn at random; never sent to the page
            shared BOOLEAN NOT NULL,         -- in the subset every reviewer judges (inter-rater agreement)
            request JSON NOT NULL,
            upstream_output VARCHAR NOT NULL,
            local_output VARCHAR NOT NULL,
            created_at TIMESTAMPTZ NOT NULL
        )
        """
    )
    con.execute(
        """
        CREATE TABLE review_judgments (
            item_id VARCHAR NOT NULL,
            site_id VARCHAR NOT NULL,
            reviewer VARCHAR NOT NULL,
            ts TIMESTAMPTZ NOT NULL,
            scores JSON NOT NULL,            -- {criterion: {"A": 1-5, "B": 1-5}} as the reviewer saw the sides
            preference VARCHAR NOT NULL,     -- A | B | tie
            local_side VARCHAR NOT NULL,     -- which side was the local answer when this was judged
            comment VARCHAR,
            source VARCHAR NOT NULL,         -- page | import
            PRIMARY KEY (item_id, reviewer)
        )
        """
    )
    con.execute(
        """
        CREATE TABLE reviewers (
            name VARCHAR PRIMARY KEY,
            token_sha256 VARCHAR NOT NULL,   -- only the hash: the token itself is shown once, in the invite URL
            created_at TIMESTAMPTZ NOT NULL
        )
        """
    )
    con.execute(
        "CREATE TABLE review_rubrics (site_id VARCHAR PRIMARY KEY, rubric JSON NOT NULL, updated_at TIMESTAMPTZ NOT NULL)"
    )
    # `understudy eval` runs (routing.evaluation), kept so the report shows the latest.
    con.execute(
        "CREATE TABLE eval_runs (id VARCHAR PRIMARY KEY, site_id VARCHAR NOT NULL, ts TIMESTAMPTZ NOT NULL, result JSON NOT NULL)"
    )


@migration
def m007_site_names(con: Cursor) -> None:
    # Every name a site has been known by (docstring slug, function or caller name, tag, renames):
    # a site's name depends on how its first calls arrived, so any of them finds it.
    con.execute(
        """
        CREATE TABLE site_names (
            site_id VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            source VARCHAR NOT NULL,         -- as sites.name_source, or tag
            first_seen TIMESTAMPTZ NOT NULL DEFAULT now(),
            PRIMARY KEY (site_id, name)
        )
        """
    )
    con.execute("INSERT INTO site_names (site_id, name, source) SELECT id, name, name_source FROM sites")
    con.execute(
        "INSERT INTO site_names (site_id, name, source) SELECT id, tag, 'tag' FROM sites "
        "WHERE tag IS NOT NULL AND tag <> name"
    )


@migration
def m008_call_client(con: Cursor) -> None:
    # Which client key made the call (the key's name from the keys file, never the key); NULL when
    # client keys are off or the proxy made the call itself before any client.
    con.execute("ALTER TABLE calls ADD COLUMN client VARCHAR")


@migration
def m009_honest_streams(con: Cursor) -> None:
    # Tokens the proxy estimated because the upstream sent no usage (NULL: no tokens at all).
    con.execute("ALTER TABLE calls ADD COLUMN usage_estimated BOOLEAN")
    # Upstream faults (proxy.retries): how often the upstream was asked, why earlier attempts failed.
    con.execute("ALTER TABLE calls ADD COLUMN attempts INTEGER")  # retries + 1; NULL when not asked
    con.execute("ALTER TABLE calls ADD COLUMN retried_for VARCHAR")  # e.g. "http 429 (retry-after 1 s); ReadTimeout"


@migration
def m010_local_tries(con: Cursor) -> None:
    # Checked sampling (inference.checked_sampling): local draws made for an answer, served, refused
    # (on the upstream's call row) or shadowed. NULL: no local answer was drawn.
    con.execute("ALTER TABLE calls ADD COLUMN local_tries INTEGER")
    con.execute("ALTER TABLE shadow_results ADD COLUMN local_tries INTEGER")


@migration
def m011_partial_threshold(con: Cursor) -> None:
    # Partial promotion (routing.partial): the confidence at or above which a site in state
    # `partial` serves its local answers; NULL in every other state.
    con.execute("ALTER TABLE sites ADD COLUMN partial_threshold DOUBLE")


def migrate(con: Cursor) -> list[str]:
    """Apply pending steps; returns the names applied now."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ DEFAULT now())"
    )
    done = {row[0] for row in con.execute("SELECT name FROM _migrations").fetchall()}
    applied = []
    for name, step in MIGRATIONS:
        if name in done:
            continue
        with transaction(con):
            step(con)
            con.execute("INSERT INTO _migrations (name) VALUES (?)", [name])
        applied.append(name)
    return applied
