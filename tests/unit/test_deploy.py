"""The compose file's pgbouncer profile, its ini and the README's deploy guide agree.

Docker is not needed: the files are read as text, YAML and INI, and checked
against each other and against ``taskq.connections.budget``.
"""

from __future__ import annotations

import ast
import configparser
import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from taskq.connections import POOLED_ROLES, budget
from worker.config import WorkerConfig

ROOT = Path(__file__).resolve().parents[2]
PGBOUNCER = ROOT / "deploy" / "pgbouncer"


def compose() -> dict:
    """docker-compose.yml, parsed."""
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def ini() -> configparser.ConfigParser:
    """deploy/pgbouncer/pgbouncer.ini, parsed (``;`` comments)."""
    parser = configparser.ConfigParser(inline_comment_prefixes=(";",))
    parser.read_string((PGBOUNCER / "pgbouncer.ini").read_text())
    return parser


def test_the_pgbouncer_service_is_an_optional_profile_built_from_files_that_exist():
    service = compose()["services"]["pgbouncer"]
    assert service["profiles"] == ["pgbouncer"]
    assert (ROOT / service["build"]) == PGBOUNCER
    dockerfile = (PGBOUNCER / "Dockerfile").read_text()
    copied = re.search(r"^COPY (.+) /etc/pgbouncer/$", dockerfile, re.M)
    assert copied, dockerfile
    for name in copied.group(1).split():
        assert (PGBOUNCER / name).is_file(), name
    assert re.search(r'^CMD \["pgbouncer", "/etc/pgbouncer/pgbouncer.ini"\]$', dockerfile, re.M)


def test_the_ini_pools_transactions_in_front_of_the_compose_postgres_with_its_credentials():
    services = compose()["services"]
    postgres = services["postgres"]["environment"]
    config = ini()
    settings = config["pgbouncer"]
    assert settings["pool_mode"] == "transaction"
    assert settings["default_pool_size"] == settings["max_db_connections"]
    assert settings["reserve_pool_size"] == "0"
    target = dict(part.split("=") for part in config["databases"][postgres["POSTGRES_DB"]].split())
    assert target["host"] in services and target["dbname"] == postgres["POSTGRES_DB"]
    user, password = re.findall(r'"([^"]*)"', (PGBOUNCER / "userlist.txt").read_text())
    assert (user, password) == (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"])
    # A heartbeat queued for a server connection fails well before its lease runs out.
    assert float(settings["query_wait_timeout"]) < WorkerConfig("").lease_seconds / 2


def test_the_pooled_url_of_compose_and_readme_is_the_ini_listener_and_listen_stays_direct():
    text = (ROOT / "docker-compose.yml").read_text() + (ROOT / "README.md").read_text()
    pooled = set(re.findall(r"TASKQ_POOLED_URL=(\S+)", text))
    assert pooled, "no TASKQ_POOLED_URL example"
    port = int(ini()["pgbouncer"]["listen_port"])
    for url in pooled:
        assert (urlsplit(url).hostname, urlsplit(url).port) == ("pgbouncer", port), url
    env = compose()["x-taskq"]["environment"]
    listen = urlsplit(env["TASKQ_LISTEN_DATABASE_URL"])
    assert (listen.hostname, listen.port) == ("postgres", 5432)
    assert "TASKQ_POOLED_URL" in env["DATABASE_URL"]


def test_the_ini_client_formula_is_the_budget_and_its_limit_holds_the_readme_example():
    # "; Clients: API processes x TASKQ_DB_POOL_MAX + worker hosts x (1 + 3 x concurrency) + 1"
    comment = re.search(r"^; Clients: (.+)$", (PGBOUNCER / "pgbouncer.ini").read_text(), re.M)
    assert comment, "the ini says how many clients to expect"
    n, pool_max, hosts, children = 3, 7, 5, 4
    formula = comment.group(1).rstrip(".")
    for words, value in (("API processes", n), ("TASKQ_DB_POOL_MAX", pool_max),
                         ("worker hosts", hosts), ("concurrency", children)):  # fmt: skip
        formula = formula.replace(words, str(value))
    assert re.fullmatch(r"[0-9x+() ]+", formula), formula
    pooled = budget(n, pool_max, hosts, children)
    assert eval(formula.replace("x", "*")) == sum(pooled[r] for r in POOLED_ROLES)
    # The README's example: 4 API hosts x 4 processes, 10 worker hosts x 8 children.
    example = budget(16, 10, 10, 8)
    assert sum(example[r] for r in POOLED_ROLES) <= int(ini()["pgbouncer"]["max_client_conn"])


def test_every_migration_since_0009_says_how_old_workers_fare_while_it_runs():
    # The README's zero-downtime upgrade runs migrations while old processes still run.
    for path in sorted((ROOT / "migrations" / "versions").glob("[0-9]*.py")):
        if path.name < "0009":
            continue  # landed before the rule; never edited
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert re.search(r"\bold\s+(workers|API\s+processes)\b", doc, re.I), path.name
