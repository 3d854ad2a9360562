"""The Grafana dashboard (dashboards/, issue #16): every query names metrics, and labels, that the service
really exports at `/metrics`, so a renamed metric cannot leave a panel silently empty."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from config import Settings
from testkit.waiting import eventually
from tests.conftest import AppClient
from tests.sse_flows import collect

DASHBOARD = Path(__file__).parent.parent / "dashboards" / "ai-chat-service.json"
METRIC = re.compile(r"\bchat_[a-z_]+\b")
GROUPING = re.compile(r"\bby \(([^)]*)\)")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def queries() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


async def exported(make_settings: Callable[..., Settings], app_client: AppClient) -> dict[str, set[str]]:
    """Every series name /metrics exports, with the labels its samples carry, once a chat has been
    answered and another refused by its budget (so the labelled families have samples)."""
    settings = make_settings(budgets="default:1tokens/day", prices="simulated:1/1")
    body = {"session_id": "s1", "message": "Fill the panels", "user_id": "u1"}
    async with app_client(settings) as client:
        accepted = (await client.post("/chat", json=body)).json()
        await collect(client, accepted["stream_url"])

        async def recorded() -> bool:
            return bool((await client.get("/usage")).json()["totals"]["answers"])

        await eventually(recorded, "the answer's usage is recorded")
        refused = await client.post("/chat", json=body)
        assert refused.status_code == 429
        text = (await client.get("/metrics")).text
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.setdefault(family.name + suffix, set())
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


async def test_every_dashboard_query_names_an_exported_metric_and_its_labels(
    make_settings: Callable[..., Settings], app_client: AppClient
) -> None:
    names = await exported(make_settings, app_client)
    used: set[str] = set()
    for expr in queries():
        metrics = set(METRIC.findall(expr))
        assert metrics, f"no metric in {expr!r}"
        for metric in metrics:
            assert metric in names, f"{metric} (in {expr!r}) is not exported by /metrics"
            labels = {label.strip() for group in GROUPING.findall(expr) for label in group.split(",")} - {
                "le"
            }
            if names[metric]:  # a family with samples: the query groups by labels it has
                assert labels <= names[metric], f"{expr!r} groups by labels {metric} does not have"
        used |= metrics
    # The panels the issue asks for: tokens and cost by key and model, budget refusals, TTFT, SSE, Redis.
    assert {
        "chat_tokens_total",
        "chat_cost_usd_total",
        "chat_budget_refusals_total",
        "chat_time_to_first_chunk_seconds_bucket",
        "chat_sse_clients",
        "chat_redis_errors_total",
        "chat_http_requests_total",
        "chat_chunks_published_total",
    } <= used
    assert names["chat_tokens_total"] >= {"key", "model", "kind", "source"}
