"""The analysis report: counts and share by sentiment, average score, tweets per hour, recent examples, a plot."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LABELS = ("POSITIVE", "NEUTRAL", "NEGATIVE")


@dataclass(frozen=True)
class Summary:
    total: int
    by_sentiment: dict[str, int]
    average_score: float
    average_score_by_sentiment: dict[str, float]
    per_hour: dict[str, int]  # "YYYY-MM-DDTHH:00Z" -> tweets, in time order
    recent: list[dict[str, Any]] = field(default_factory=list)

    def share(self, label: str) -> float:
        return self.by_sentiment.get(label, 0) / self.total if self.total else 0.0


def _moment(item: Mapping[str, Any]) -> datetime | None:
    for key in ("data", "analyzed_at"):
        value = item.get(key)
        if isinstance(value, str) and value:
            try:
                moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return None


def _hour(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:00Z")


def summarize(items: Sequence[Mapping[str, Any]], recent: int = 5) -> Summary:
    """Figures over the table's items (as `dynamodb.scan_items` returns them)."""
    by_sentiment = Counter(str(item.get("sentiment", "")) for item in items)
    scores: dict[str, list[float]] = {}
    for item in items:
        scores.setdefault(str(item.get("sentiment", "")), []).append(float(item.get("score", 0)))
    all_scores = [s for values in scores.values() for s in values]
    moments = [_moment(item) for item in items]  # parsed once: ISO parsing is the cost on a big table
    per_hour = Counter(_hour(m) for m in moments if m is not None)
    oldest = datetime.min.replace(tzinfo=UTC)
    newest_first = sorted(range(len(items)), key=lambda i: moments[i] or oldest, reverse=True)
    return Summary(
        total=len(items),
        by_sentiment=dict(by_sentiment),
        average_score=sum(all_scores) / len(all_scores) if all_scores else 0.0,
        average_score_by_sentiment={k: sum(v) / len(v) for k, v in scores.items()},
        per_hour=dict(sorted(per_hour.items())),
        recent=[dict(items[i]) for i in newest_first[:recent]],
    )


def render(summary: Summary, hours_shown: int = 24) -> str:
    lines = [
        f"tweets analysed: {summary.total}",
        "",
        f"{'sentiment':<10} {'count':>8} {'share':>7} {'avg score':>10}",
    ]
    labels = [*LABELS, *sorted(set(summary.by_sentiment) - set(LABELS))]
    for label in labels:
        count = summary.by_sentiment.get(label, 0)
        average = summary.average_score_by_sentiment.get(label, 0.0)
        lines.append(f"{label:<10} {count:>8} {summary.share(label):>7.1%} {average:>10.3f}")
    lines.append(
        f"{'all':<10} {summary.total:>8} {1 if summary.total else 0:>7.1%} {summary.average_score:>10.3f}"
    )
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


def plot(items: Sequence[Mapping[str, Any]], out: str | Path) -> Path:
    """Tweets per hour by sentiment (stacked) and the hourly average score, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    hours: dict[datetime, Counter[str]] = {}
    score_sum: dict[datetime, float] = {}
    for item in items:
        moment = _moment(item)
        if moment is None:
            continue
        hour = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        hours.setdefault(hour, Counter())[str(item.get("sentiment", ""))] += 1
        score_sum[hour] = score_sum.get(hour, 0.0) + float(item.get("score", 0))
    hours_sorted = sorted(hours)
    xs = mdates.date2num(hours_sorted)  # type: ignore[no-untyped-call]  # matplotlib leaves it untyped
    fig, ax = plt.subplots(figsize=(10, 4.5))
    colours = {"POSITIVE": "tab:green", "NEUTRAL": "tab:gray", "NEGATIVE": "tab:red"}
    bottom = [0] * len(hours_sorted)
    width = 1 / 24 * 0.9
    for label in LABELS:
        counts = [hours[h][label] for h in hours_sorted]
        ax.bar(xs, counts, width=width, bottom=bottom, label=label, color=colours[label], align="edge")
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax.set_ylabel("tweets per hour")
    ax.set_title("Sentiment over time")
    twin = ax.twinx()
    twin.plot(
        xs,
        [score_sum[h] / sum(hours[h].values()) for h in hours_sorted],
        color="black",
        marker=".",
        label="avg score",
    )
    twin.set_ylim(0, 1)
    twin.set_ylabel("average score")
    ax.legend(loc="upper left")
    ax.xaxis_date()
    fig.autofmt_xdate()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
