"""Helpers of the report tests: seeded report inputs built by hand, and a reader of the HTML page.

``synthetic_inputs`` gives a report every section of which has content (every activity bucket
populated, three epochs), without training anything; ``read_page`` turns ``report.html`` into the
parts the tests assert on, through the standard library's ``html.parser``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

import numpy as np

from recsys.evaluation.report import ReportInputs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic_inputs(num_users: int = 240, num_items: int = 50, k: int = 10, seed: int = 0) -> ReportInputs:
    """A model and a baseline over ``num_users`` users whose histories span every activity bucket."""
    rng = np.random.default_rng(seed)
    # Every bucket (1-4, 5-19, 20-99, 100+) gets a quarter of the users.
    lows, highs = np.array([1, 5, 20, 100]), np.array([5, 20, 100, 300])
    bucket = np.arange(num_users) % 4
    history = rng.integers(lows[bucket], highs[bucket])
    item_counts = rng.zipf(1.6, num_items).clip(max=500) - 1  # a long tail, some items never seen
    model_top = np.stack([rng.permutation(num_items)[:k] for _ in range(num_users)])
    popular_order = np.argsort(-item_counts, kind="stable")
    baseline_top = np.tile(popular_order[:k], (num_users, 1))
    model_values: dict[str, np.ndarray] = {}
    baseline_values: dict[str, np.ndarray] = {}
    metrics: dict[str, float] = {}
    baseline: dict[str, float] = {}
    for name in ("ndcg", "hr", "recall", "precision", "map", "mrr"):
        key = f"{name}@{k}"
        model_values[key] = rng.random(num_users).astype(np.float32) * 0.6
        baseline_values[key] = rng.random(num_users).astype(np.float32) * 0.4
        for target, values in ((metrics, model_values[key]), (baseline, baseline_values[key])):
            target[key] = float(values.mean())
            target[f"{key}_se"] = float(values.std(ddof=1) / np.sqrt(num_users))
    metrics.update({f"sampled_hr@{k}": 0.61, f"sampled_hr@{k}_se": 0.02, f"sampled_ndcg@{k}": 0.35})
    metrics.update({f"coverage@{k}": 0.9, f"gini@{k}": 0.2, f"novelty@{k}": 5.1})
    baseline.update({f"coverage@{k}": 0.2, f"gini@{k}": 0.8, f"novelty@{k}": 1.4})
    epochs = [
        {
            "epoch": e,
            "train_loss": 1.0 / e,
            "seconds": 0.5,
            "samples_per_second": 1000.0,
            "validation": {f"ndcg@{k}": 0.1 * e, f"hr@{k}": 0.2 * e},
        }
        for e in (1, 2, 3)
    ]
    return ReportInputs(
        title='Report <of> a test & its "quotes"',  # every text is escaped
        source="synthetic, seeded inputs",
        ks=(k,),
        k=k,
        model_metrics=metrics,
        baseline_metrics=baseline,
        comparison={"metric": f"ndcg@{k}", "clearly_better": True, "verdict": "clearly better <b>"},
        model_values=model_values,
        baseline_values=baseline_values,
        history_lengths=history,
        item_counts=item_counts,
        model_top=model_top,
        baseline_top=baseline_top,
        epochs=epochs,
        best_epoch=3,
        details={"model": "neumf"},
        notes=("a note <script>",),
    )


@dataclass
class Table:
    header_rows: list[list[str]] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)

    @property
    def header(self) -> list[str]:
        """The last header row: the column names."""
        return self.header_rows[-1] if self.header_rows else []

    def column(self, name: str) -> list[str]:
        index = self.header.index(name)
        return [row[index] for row in self.rows]


@dataclass
class Page:
    title: str = ""
    h1: str = ""
    h2: list[str] = field(default_factory=list)
    tables: dict[str, Table] = field(default_factory=dict)
    images: list[dict[str, str]] = field(default_factory=list)
    links: list[str] = field(default_factory=list)  # every src, href, srcset, action, poster, data
    tags: set[str] = field(default_factory=set)


class _PageReader(HTMLParser):
    _LINK_ATTRIBUTES = frozenset({"src", "href", "srcset", "action", "poster", "data", "formaction"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._text: list[str] | None = None
        self._target = ""
        self._table: Table | None = None
        self._in_head = False
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        self.page.tags.add(tag)
        self.page.links += [v for name, v in values.items() if name in self._LINK_ATTRIBUTES]
        if tag == "table":
            self._table = self.page.tables.setdefault(
                values.get("id", f"table{len(self.page.tables)}"), Table()
            )
        elif tag == "thead":
            self._in_head = True
        elif tag == "tbody":
            self._in_head = False
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th", "title", "h1", "h2"):
            self._text, self._target = [], tag
        elif tag == "img":
            self.page.images.append(values)

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == self._target and self._text is not None:
            text = "".join(self._text).strip()
            self._text = None
            if tag in ("td", "th") and self._row is not None:
                self._row.append(text)
            elif tag == "title":
                self.page.title = text
            elif tag == "h1":
                self.page.h1 = text
            elif tag == "h2":
                self.page.h2.append(text)
        elif tag == "tr" and self._row is not None and self._table is not None:
            (self._table.header_rows if self._in_head else self._table.rows).append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None


def read_page(text: str) -> Page:
    reader = _PageReader()
    reader.feed(text)
    reader.close()
    return reader.page


def with_se(mean: float | None, se: float | None) -> str:
    """How the page spells a mean and its standard error (``—`` when there is none)."""
    if mean is None:
        return "—"
    return f"{mean:.4f}" + (f" ± {se:.4f}" if se is not None else "")
