"""The README documents what the code does: its tables are checked against the code."""

from __future__ import annotations

import re
from pathlib import Path

from recsys.config import hyperparameter_table
from recsys.sagemaker.metric_definitions import METRIC_DEFINITIONS

README = Path(__file__).resolve().parents[1] / "README.md"


def test_hyperparameter_table_matches_the_code() -> None:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- hyperparameters:start -->\n(.*?)\n<!-- hyperparameters:end -->", text, re.S)
    assert match, "README lacks the hyperparameters section markers"
    assert match.group(1).strip() == hyperparameter_table().strip(), (
        "README's hyperparameter table is stale: paste the output of `recsys hyperparameters`"
    )


def test_metric_definitions_in_readme_are_the_ones_in_code() -> None:
    text = README.read_text(encoding="utf-8")
    for definition in METRIC_DEFINITIONS:
        assert f'"Name": "{definition["Name"]}", "Regex": r"{definition["Regex"]}"' in text


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_within_the_readme_names_a_heading() -> None:
    text = README.read_text(encoding="utf-8")
    # Code blocks hold shell comments, not headings.
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    anchors = {_slug(line.lstrip("#")) for line in prose.splitlines() if line.startswith("#")}
    links = set(re.findall(r"\]\(#([^)\s]+)\)", prose))
    assert links, "the README links its sections to each other"
    assert sorted(links - anchors) == []
