"""The analysis report: counts and share by sentiment and by model version, average score, tweets per hour,
recent examples, a plot; over a time window or the whole table.

`Aggregate` folds pages of items as `stream_svc.reads` delivers them (memory: one counter per hour, label
and model version, and the `recent` newest ids, whatever the table holds); `finish` makes the `Summary`.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from stream_svc.keys import SORT, hour_of, item_moment, sort_time

LABELS = ("POSITIVE", "NEUTRAL", "NEGATIVE")


@dataclass(frozen=True)
class Summary:
    total: int
    by_sentiment: dict[str, int]
    average_score: float
    average_score_by_sentiment: dict[str, float]
    per_hour: dict[str, int]  # "YYYY-MM-DDTHH:00Z" -> tweets, in time order
    recent: list[dict[str, Any]] = field(default_factory=list)
    by_model_version: dict[str, dict[str, int]] = field(default_factory=dict)  # version -> label -> n
    per_hour_by_sentiment: dict[str, dict[str, int]] = field(default_factory=dict)
    per_hour_average_score: dict[str, float] = field(default_factory=dict)
    # {"since", "until"} (ISO, or None for the whole table) and "model_version" (None: all)
    window: dict[str, str | None] = field(default_factory=dict)
    reads: dict[str, Any] = field(default_factory=dict)  # "requests" by operation, "items_read"

    def share(self, label: str) -> float:
        return self.by_sentiment.get(label, 0) / self.total if self.total else 0.0


class Aggregate:
    """Running figures over pages of items (plain attribute -> string dicts, as `reads` yields them)."""

    def __init__(self, recent: int = 5) -> None:
        self.recent = recent
        self.total = 0
        self.by_sentiment: Counter[str] = Counter()
        self.score_sum: defaultdict[str, float] = defaultdict(float)
        self.by_version: dict[str, Counter[str]] = {}
        self.by_hour: dict[str, Counter[str]] = {}
        self.hour_score_sum: defaultdict[str, float] = defaultdict(float)
        self._newest: list[tuple[str, str]] = []  # a min-heap of (time, id): the `recent` newest

    def fold(self, rows: list[dict[str, str]]) -> None:
        for row in rows:
            label = row.get("sentiment", "")
            score = float(row.get("score") or 0)
            when = row.get(SORT, "")[:24]  # `<time>#<id>`: the time part
            if when:
                hour = when[:13]
            elif (moment := item_moment(row)) is not None:  # written before the time keys
                when, hour = sort_time(moment), hour_of(moment)
            else:
                hour = ""
            self.total += 1
            self.by_sentiment[label] += 1
            self.score_sum[label] += score
            self.by_version.setdefault(row.get("model_version", ""), Counter())[label] += 1
            if hour:
                self.by_hour.setdefault(hour, Counter())[label] += 1
                self.hour_score_sum[hour] += score
            if self.recent:
                entry = (when, row.get("id", ""))
                if len(self._newest) < self.recent:
                    heapq.heappush(self._newest, entry)
                elif entry > self._newest[0]:
                    heapq.heapreplace(self._newest, entry)

    def newest_ids(self) -> list[str]:
        return [tweet_id for _, tweet_id in sorted(self._newest, reverse=True)]

    def finish(self, recent_items: list[dict[str, Any]] | None = None, **extra: Any) -> Summary:
        """The Summary; `recent_items` are the full items of `newest_ids()` (any order); `extra` holds
        `window` and `reads`."""
        order = {tweet_id: i for i, tweet_id in enumerate(self.newest_ids())}
        recent = sorted(recent_items or [], key=lambda item: order.get(str(item.get("id")), len(order)))
        hours = sorted(self.by_hour)
        total_score = sum(self.score_sum.values())
        return Summary(
            total=self.total,
            by_sentiment=dict(self.by_sentiment),
            average_score=total_score / self.total if self.total else 0.0,
            average_score_by_sentiment={k: self.score_sum[k] / n for k, n in self.by_sentiment.items()},
            per_hour={f"{h}:00Z": sum(self.by_hour[h].values()) for h in hours},
            recent=recent,
            by_model_version={v: dict(c) for v, c in sorted(self.by_version.items())},
            per_hour_by_sentiment={f"{h}:00Z": dict(self.by_hour[h]) for h in hours},
            per_hour_average_score={
                f"{h}:00Z": self.hour_score_sum[h] / sum(self.by_hour[h].values()) for h in hours
            },
            **extra,
        )


def render(summary: Summary, hours_shown: int = 24) -> str:
    lines = [_window_line(summary)]
    if summary.reads:
        requests = summary.reads.get("requests", {})
        calls = ", ".join(f"{n} {op}" for op, n in sorted(requests.items())) or "no requests"
        took = f" in {summary.reads['seconds']:.2f}s" if "seconds" in summary.reads else ""
        lines.append(f"read: {summary.reads.get('items_read', 0)} items ({calls}){took}")
    lines += [f"tweets analysed: {summary.total}", ""]
    lines.append(f"{'sentiment':<10} {'count':>8} {'share':>7} {'avg score':>10}")
    labels = [*LABELS, *sorted(set(summary.by_sentiment) - set(LABELS))]
    for label in labels:
        count = summary.by_sentiment.get(label, 0)
        average = summary.average_score_by_sentiment.get(label, 0.0)
        lines.append(f"{label:<10} {count:>8} {summary.share(label):>7.1%} {average:>10.3f}")
    lines.append(
        f"{'all':<10} {summary.total:>8} {1 if summary.total else 0:>7.1%} {summary.average_score:>10.3f}"
    )
    if summary.by_model_version:
        lines += ["", f"{'model version':<24} {'count':>8}  " + "  ".join(f"{x:>8}" for x in LABELS)]
        for version, counts in summary.by_model_version.items():
            cells = "  ".join(f"{counts.get(x, 0):>8}" for x in LABELS)
            lines.append(f"{version or '(none)':<24} {sum(counts.values()):>8}  {cells}")
    hours = list(summary.per_hour.items())
    if hours:
        mean = sum(c for _, c in hours) / len(hours)
        lines += [
            "",
            f"tweets per hour: {mean:.1f} on average over {len(hours)} hours (last {min(len(hours), hours_shown)} shown)",
        ]
        lines += [f"  {hour}  {count}" for hour, count in hours[-hours_shown:]]
    if summary.recent:
        lines += ["", "most recent:"]
        for item in summary.recent:
            text = " ".join(str(item.get("twitter_raw", "")).split())[:100]
            lines.append(
                f"  {item.get('data', '')}  @{item.get('user', '')}  {item.get('sentiment', '')} "
                f"{float(item.get('score', 0)):.3f}  {text}"
            )
    return "\n".join(lines)


def _window_line(summary: Summary) -> str:
    window = summary.window
    if not window.get("since"):
        shown = "the whole table"
    else:
        shown = f"{window['since']} to {window.get('until')}"
    if window.get("model_version"):
        shown += f", model version {window['model_version']}"
    return f"window: {shown}"


def _plot_title(summary: Summary) -> str:
    since, until = summary.window.get("since"), summary.window.get("until")
    shown = "Sentiment over time"
    if since and until:
        shown += f", {since[:16].replace('T', ' ')} to {until[:16].replace('T', ' ')} UTC"
    if summary.window.get("model_version"):
        shown += f"\nmodel version {summary.window['model_version']}"
    return shown


def _hour_start(key: str) -> datetime:
    return datetime.strptime(key, "%Y-%m-%dT%H:00Z").replace(tzinfo=UTC)


def plot(summary: Summary, out: str | Path) -> Path:
    """Tweets per hour by sentiment (stacked) and the hourly average score, as a PNG over the window
    (over the hours that hold tweets for the whole table)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    by_hour: Mapping[str, Mapping[str, int]] = summary.per_hour_by_sentiment
    hours_sorted = [_hour_start(h) for h in by_hour]
    xs = mdates.date2num(hours_sorted)  # type: ignore[no-untyped-call]  # matplotlib leaves it untyped
    fig, ax = plt.subplots(figsize=(10, 4.5))
    colours = {"POSITIVE": "tab:green", "NEUTRAL": "tab:gray", "NEGATIVE": "tab:red"}
    bottom = [0] * len(hours_sorted)
    width = 1 / 24 * 0.9
    for label in LABELS:
        counts = [counts.get(label, 0) for counts in by_hour.values()]
        ax.bar(xs, counts, width=width, bottom=bottom, label=label, color=colours[label], align="edge")
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax.set_ylabel("tweets per hour")
    ax.set_title(_plot_title(summary))
    twin = ax.twinx()
    twin.plot(xs, list(summary.per_hour_average_score.values()), color="black", marker=".", label="avg score")
    twin.set_ylim(0, 1)
    twin.set_ylabel("average score")
    since, until = summary.window.get("since"), summary.window.get("until")
    if since and until:
        bounds = [datetime.fromisoformat(t.replace("Z", "+00:00")) for t in (since, until)]
        ax.set_xlim(*mdates.date2num(bounds))  # type: ignore[no-untyped-call]
    elif hours_sorted:
        ax.set_xlim(*mdates.date2num([hours_sorted[0], hours_sorted[-1] + timedelta(hours=1)]))  # type: ignore[no-untyped-call]
    ax.legend(loc="upper left")
    ax.xaxis_date()
    fig.autofmt_xdate()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
