"""The README documents what the code does: its tables are checked against the code."""

from __future__ import annotations

import re
from pathlib import Path

from recsys.config import hyperparameter_table
from recsys.sagemaker.metric_definitions import METRIC_DEFINITIONS
from recsys.serving.schemas import HistoryEvent, Instance

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


def _invocation_examples() -> str:
    """The commands (comments left out) of the shell block in README's "POST /invocations"."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### POST /invocations", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```bash\n(.*?)\n```", section, re.S)
    assert match, 'README\'s "POST /invocations" has no shell block of examples'
    return "\n".join(line for line in match.group(1).splitlines() if not line.lstrip().startswith("#"))


def test_every_request_field_has_a_curl_example() -> None:
    examples = _invocation_examples()
    fields = [*Instance.model_fields, *HistoryEvent.model_fields]

    missing = [name for name in fields if f'"{name}":' not in examples]

    assert not missing, f"README's POST /invocations examples never send {missing}"


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
