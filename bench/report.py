"""The run's figures as goals (issue #6), a table for the terminal and the README, and a chart."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _goal(name: str, figure: float | None, limit: float, *, at_least: bool, unit: str) -> dict[str, Any]:
    met = None if figure is None or math.isnan(figure) else (figure >= limit if at_least else figure <= limit)
    return {"goal": name, "figure": figure, "limit": limit, "at_least": at_least, "unit": unit, "met": met}


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if "a" in results:
        found.append(
            _goal(
                "a. POST /chat / HTTP ceiling (64 conn.)", results["a"]["ratio"], 0.6, at_least=True, unit="x"
            )
        )
    if "b" in results:
        found.append(
            _goal("b. chunks/s / client ceiling", results["b"]["ratio"], 0.7, at_least=True, unit="x")
        )
    if "c" in results:
        levels = {level["sessions"]: level for level in results["c"]["levels"]}
        if 1 in levels:
            found.append(
                _goal(
                    "c. first chunk p50, 1 session", levels[1]["chunk_p50_ms"], 5, at_least=False, unit="ms"
                )
            )
            found.append(
                _goal(
                    "c. first chunk p99, 1 session", levels[1]["chunk_p99_ms"], 25, at_least=False, unit="ms"
                )
            )
        top = max(levels)
        if top > 1:
            found.append(
                _goal(
                    f"c. first chunk p99, {top} sessions",
                    levels[top]["chunk_p99_ms"],
                    100,
                    at_least=False,
                    unit="ms",
                )
            )
    if "d" in results:
        d = results["d"]
        found.append(
            _goal(
                f"d. lateness p99, {d['answers']} paced answers",
                d["lateness_p99_ms"],
                50,
                at_least=False,
                unit="ms",
            )
        )
        found.append(
            _goal(
                "f. memory per running answer",
                d["bytes_per_running_answer"] / 1000,
                50,
                at_least=False,
                unit="KB",
            )
        )
    if "e" in results:
        e = results["e"]
        found.append(
            _goal(
                f"e. Redis connections, {e['clients']} SSE clients",
                e["redis_connections"],
                4,
                at_least=False,
                unit="",
            )
        )
        found.append(_goal("e. SSE delivery p99", e["delivery_p99_ms"], 100, at_least=False, unit="ms"))
        if "deliveries_expected" in e:  # every event to every client (runs before issue #14 had no count)
            found.append(
                _goal(
                    "e. events delivered / expected",
                    e["deliveries"] / max(e["deliveries_expected"], 1),
                    1.0,
                    at_least=True,
                    unit="x",
                )
            )
        found.append(
            _goal(
                "f. memory per idle SSE client",
                e["bytes_per_idle_client"] / 1000,
                20,
                at_least=False,
                unit="KB",
            )
        )
    found += _relay_goals(results)
    return found


# g and h: the service's modes as the table and the chart name them.
MODES = {"v1": "/v1 stateless", "v1-session": "/v1 with X-Session-Id", "chat": "POST /chat"}
FIRST_CHUNK_LIMITS = {"v1": 1.0, "v1-session": 2.0, "chat": 2.0}


def _relay_goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if "g" in results:
        relays = results["g"]["relays"]
        litellm = relays.get("litellm", {}).get("cpu_us_per_chunk")
        for mode, label in MODES.items():
            if mode not in relays:
                continue
            cpu = relays[mode]["cpu_us_per_chunk"]
            ratio = round(cpu / litellm, 3) if litellm else None
            found.append(
                _goal(f"g. CPU per chunk / LiteLLM's, {label}", ratio, 0.1, at_least=False, unit="x")
            )
            found.append(
                _goal(
                    f"g. first chunk over the upstream's, {label}",
                    relays[mode]["first_chunk_over_upstream_ms"],
                    FIRST_CHUNK_LIMITS[mode],
                    at_least=False,
                    unit="ms",
                )
            )
    if "h" in results:
        relays = results["h"]["relays"]
        if "v1" in relays:
            ours = relays["v1"]["sustained"]
            found.append(_goal("h. paced answers sustained, /v1", ours, 1000, at_least=True, unit=""))
            if "litellm" in relays:
                theirs = relays["litellm"]["sustained"]
                ratio = round(ours / theirs, 2) if theirs else None
                found.append(
                    _goal("h. paced answers sustained / LiteLLM's", ratio, 10, at_least=True, unit="x")
                )
    return found


def _met(goal: dict[str, Any] | None) -> str:
    return "-" if goal is None or goal["met"] is None else ("yes" if goal["met"] else "**no**")


def _relay_rows(figures: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    s = figures["scenarios"]
    by_name = {goal["goal"]: goal for goal in figures["goals"]}
    rows: list[tuple[str, str, str, str, str]] = []
    if "g" in s:
        g = s["g"]
        relays = g["relays"]
        litellm = relays.get("litellm")
        reference = (
            f"LiteLLM {_fmt(litellm['cpu_us_per_chunk'])} µs/chunk, first chunk "
            f"+{litellm['first_chunk_over_upstream_ms']} ms"
            if litellm
            else g.get("litellm", "LiteLLM not run")
        )
        for mode, label in MODES.items():
            if mode not in relays:
                continue
            relay = relays[mode]
            redis = f" (+{relay['redis_cpu_us_per_chunk']} Redis)" if relay["redis_cpu_us_per_chunk"] else ""
            cpu_goal = by_name.get(f"g. CPU per chunk / LiteLLM's, {label}")
            first_goal = by_name.get(f"g. first chunk over the upstream's, {label}")
            ratio = (
                f"ratio {cpu_goal['figure']}" if cpu_goal and cpu_goal["figure"] is not None else "no ratio"
            )
            rows.append(
                (
                    f"g. relay, {label}",
                    f"{_fmt(relay['cpu_us_per_chunk'])} µs/chunk{redis}, first chunk "
                    f"+{relay['first_chunk_over_upstream_ms']} ms",
                    reference,
                    f"{ratio} <= 0.1, +{FIRST_CHUNK_LIMITS[mode]:g} ms",
                    "yes"
                    if _met(cpu_goal) == "yes" and _met(first_goal) == "yes"
                    else ("-" if _met(cpu_goal) == "-" and _met(first_goal) == "-" else "**no**"),
                )
            )
    if "h" in s:
        h = s["h"]
        relays = h["relays"]
        if "v1" in relays:
            theirs = relays.get("litellm")

            def carried(relay: dict[str, Any]) -> str:
                per_core = relay.get("answers_per_core")
                return f"{_fmt(relay['sustained'])} at once" + (
                    f" (its CPU per token: ~{_fmt(per_core)} per core)" if per_core else ""
                )

            alone = h.get("upstream_alone")
            floor = (
                f"; upstream alone, {alone['answers']} answers: lateness p99 {alone['lateness_p99_ms']} ms"
                if alone
                else ""
            )
            rows.append(
                (
                    f"h. paced answers at {h['tokens_per_s']} tokens/s, /v1",
                    f"{carried(relays['v1'])} within {h['bound_ms']:g} ms",
                    (f"LiteLLM {carried(theirs)}" if theirs else h.get("litellm", "LiteLLM not run")) + floor,
                    ">= 1,000, >= 10x LiteLLM",
                    "yes"
                    if all(_met(goal) == "yes" for name, goal in by_name.items() if name.startswith("h."))
                    else "**no**",
                )
            )
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 10 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(figures: dict[str, Any]) -> str:
    """A Markdown table: readable in a terminal, pasted as is into the README."""
    s = figures["scenarios"]
    rows = [("Scenario", "Service", "Reference", "Goal", "Met")]

    def met(prefix: str) -> str:
        """Whether every goal of a scenario (`e.`: connections, delivery, all delivered) is met."""
        found = [goal["met"] for goal in figures["goals"] if goal["goal"].startswith(prefix)]
        if not found or None in found:
            return "-"
        return "yes" if all(found) else "**no**"

    if "a" in s:
        a = s["a"]
        svc, ceil = a["service"][-1], a["ceiling"][-1]
        rows.append(
            (
                f"a. POST /chat, {svc['concurrency']} connections",
                f"{_fmt(svc['requests_per_s'])} req/s (p50 {svc['p50_ms']} ms, p99 {svc['p99_ms']} ms)",
                f"{_fmt(ceil['requests_per_s'])} req/s bare FastAPI (p99 {ceil['p99_ms']} ms)",
                f"ratio {a['ratio']} >= 0.6",
                met("a."),
            )
        )
    if "a_workers" in s:
        w = s["a_workers"]
        one = s.get("a", {}).get("service", [{}])[-1].get("requests_per_s")
        svc, ceil = w["service"][-1], w["ceiling"][-1]
        speedup = f", x{svc['requests_per_s'] / one:.2f} of 1 worker" if one else ""
        rows.append(
            (
                f"a. same, --workers {w['workers']}",
                f"{_fmt(svc['requests_per_s'])} req/s{speedup}",
                f"{_fmt(ceil['requests_per_s'])} req/s bare FastAPI, {w['workers']} workers",
                "nearly double",
                "-",
            )
        )
    if "b" in s:
        b = s["b"]
        rows.append(
            (
                f"b. chunks to a subscriber, {b['answers']} answers",
                f"{_fmt(b['service']['chunks_per_s'])} chunks/s, with replay log",
                f"{_fmt(b['ceiling']['chunks_per_s'])} chunks/s redis-py pipelined PUBLISH",
                f"ratio {b['ratio']} >= 0.7",
                met("b."),
            )
        )
    if "c" in s:
        for level in s["c"]["levels"]:
            prefix = "1 session" if level["sessions"] == 1 else f"{level['sessions']} sessions"
            goal = "p50 <= 5, p99 <= 25 ms" if level["sessions"] == 1 else "p99 <= 100 ms"
            show = level["sessions"] == 1 or level is s["c"]["levels"][-1]
            rows.append(
                (
                    f"c. time to first chunk, {prefix}",
                    f"p50 {level['chunk_p50_ms']} ms, p99 {level['chunk_p99_ms']} ms "
                    f"(start p99 {level['start_p99_ms']} ms; {_fmt(level['answers_per_s'])} answers/s)",
                    "",
                    goal if show else "",
                    met("c.") if show else "",
                )
            )
    if "d" in s:
        d = s["d"]
        rows.append(
            (
                f"d. {d['answers']:,} paced answers",
                f"lateness p99 {d['lateness_p99_ms']} ms (p50 {d['lateness_p50_ms']}); "
                f"loop lag p99 {d['loop_lag_p99_ms']} ms",
                f"{d['chunks']:,} chunks",
                "lateness p99 <= 50 ms",
                met("d."),
            )
        )
    if "e" in s:
        e = s["e"]
        rows.append(
            (
                f"e. {e['clients']:,} SSE clients, {e['sessions']} sessions",
                f"{_fmt(e['deliveries_per_s'])} events/s, p99 {e['delivery_p99_ms']} ms, "
                f"{e['redis_connections']} Redis connections",
                f"{e['deliveries']:,} of {e.get('deliveries_expected', 0):,} events delivered, "
                f"{e['clients_finished']:,} clients got `end`",
                "<= 4 connections, p99 <= 100 ms, all delivered",
                met("e."),
            )
        )
    if "d" in s or "e" in s:
        per_answer = s["d"]["bytes_per_running_answer"] / 1000 if "d" in s else None
        per_client = s["e"]["bytes_per_idle_client"] / 1000 if "e" in s else None
        rows.append(
            (
                "f. memory",
                f"{_fmt(per_answer)} KB per running answer, {_fmt(per_client)} KB per idle SSE client",
                "",
                "<= 50 KB, <= 20 KB",
                met("f."),
            )
        )
    rows += _relay_rows(figures)
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)


def chart(figures: dict[str, Any], path: Path) -> None:
    """Latency against load: POST /chat against its ceiling, and time to first chunk against sessions;
    below them, when the run has g and h, each relay's CPU per chunk and its lateness against answers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = figures["scenarios"]
    rows = []
    if "a" in s and "c" in s:
        rows.append(_latency_chart)
    if "g" in s or "h" in s:
        rows.append(_relay_chart)
    fig, axes = plt.subplots(len(rows), 2, figsize=(11, 5.4 * len(rows)), dpi=110, squeeze=False)
    for row, draw in enumerate(rows):
        draw(s, axes[row][0], axes[row][1])
    fig.suptitle(f"make bench, {figures['date'][:10]}, {figures['machine']['cores']} cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _latency_chart(s: dict[str, Any], left: Any, right: Any) -> None:
    """a: POST /chat against its ceiling; c: time to first chunk against sessions."""
    colours = {"service": "tab:blue", "ceiling": "tab:green"}
    names = {"service": "POST /chat", "ceiling": "bare FastAPI (HTTP ceiling)"}
    for name in ("service", "ceiling"):
        points = s["a"][name]
        rates = [point["requests_per_s"] for point in points]
        colour = colours[name]
        left.plot(rates, [p["p99_ms"] for p in points], "-o", color=colour, label=f"{names[name]}, p99")
        left.plot(rates, [p["p50_ms"] for p in points], "--o", color=colour, alpha=0.45, label="p50")
        for point in points:
            left.annotate(
                f"{point['concurrency']} conn.",
                (point["requests_per_s"], point["p99_ms"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
        workers = s.get("a_workers")
        if workers:
            top = workers[name][-1]
            left.plot(
                [top["requests_per_s"]],
                [top["p99_ms"]],
                "*",
                markersize=11,
                color=colour,
                label=f"{names[name]}, {workers['workers']} workers, p99",
            )
    left.set_xlabel("throughput (requests/s)")
    left.set_ylabel("latency (ms, log scale)")
    left.set_yscale("log")
    left.set_title("a. POST /chat against the HTTP ceiling")
    left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    left.grid(alpha=0.3)

    levels = s["c"]["levels"]
    sessions = [level["sessions"] for level in levels]
    right.plot(sessions, [level["chunk_p99_ms"] for level in levels], "-o", color="tab:blue", label="p99")
    right.plot(
        sessions,
        [level["chunk_p50_ms"] for level in levels],
        "--o",
        color="tab:blue",
        alpha=0.45,
        label="p50",
    )
    right.plot(
        sessions, [level["start_p99_ms"] for level in levels], ":", color="tab:orange", label="`start`, p99"
    )
    right.axhline(100, color="tab:red", linestyle="--", linewidth=0.8)
    right.annotate(
        "goal at 500 sessions: p99 100 ms", (sessions[-1], 100), fontsize=7, ha="right", va="bottom"
    )
    right.axhline(25, color="tab:red", linestyle=":", linewidth=0.8)
    right.annotate("goal at 1 session: p99 25 ms", (sessions[-1], 25), fontsize=7, ha="right", va="bottom")
    right.set_yscale("log")
    right.set_xlabel(f"concurrent sessions (each: POST, whole answer, pause ~{s['c']['think_s']} s)")
    right.set_ylabel("POST sent to first chunk received (ms, log scale)")
    right.set_title("c. time to first chunk against load")
    right.legend(fontsize=7, loc="center right")
    right.grid(alpha=0.3)


RELAY_NAMES = {**MODES, "litellm": "LiteLLM proxy"}
RELAY_COLOURS = {"v1": "tab:blue", "v1-session": "tab:cyan", "chat": "tab:purple", "litellm": "tab:orange"}


def _relay_chart(s: dict[str, Any], left: Any, right: Any) -> None:
    """g: CPU per relayed chunk of each relay; h: chunk lateness p99 against paced answers at once."""
    if "g" in s:
        relays = {name: r for name, r in s["g"]["relays"].items() if "cpu_us_per_chunk" in r}
        names = list(relays)
        values = [relays[name]["cpu_us_per_chunk"] for name in names]
        bars = left.bar(
            [RELAY_NAMES.get(name, name) for name in names],
            values,
            color=[RELAY_COLOURS.get(name, "tab:gray") for name in names],
        )
        left.bar_label(bars, [f"{value:.0f} µs" for value in values], fontsize=8)
        left.set_ylabel("CPU per relayed chunk (µs, the relay process and its children)")
        left.set_title(
            f"g. relay CPU, {s['g']['clients']} clients, {s['g']['chunks_per_answer']}-chunk answers"
        )
        left.tick_params(axis="x", labelsize=7)
        left.grid(alpha=0.3, axis="y")
    if "h" in s:
        h = s["h"]
        for name, relay in h["relays"].items():
            levels = relay["levels"]
            right.plot(
                [level["answers"] for level in levels],
                [max(level["lateness_p99_ms"], 0.1) for level in levels],
                "-o",
                color=RELAY_COLOURS.get(name, "tab:gray"),
                label=f"{RELAY_NAMES.get(name, name)}: {relay['sustained']:,} sustained",
            )
        right.axhline(h["bound_ms"], color="tab:red", linestyle="--", linewidth=0.8)
        right.annotate(
            f"bound: p99 {h['bound_ms']:g} ms",
            (0.02, h["bound_ms"]),
            xycoords=("axes fraction", "data"),
            fontsize=7,
            va="bottom",
        )
        right.set_xscale("log")
        right.set_yscale("log")
        right.set_xlabel(f"paced answers at once ({h['tokens_per_s']} tokens/s each)")
        right.set_ylabel("chunk lateness p99 (ms, log scale)")
        right.set_title("h. answers a relay carries within the bounds")
        right.legend(fontsize=7)
        right.grid(alpha=0.3)
