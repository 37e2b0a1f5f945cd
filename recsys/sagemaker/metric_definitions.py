"""SageMaker metric definitions matching the training log's per-epoch lines.

A line looks like ``epoch=3 train_loss=5.4121 val_ndcg@10=0.0812 val_hr@10=0.1544
epoch_seconds=1.93 samples_per_second=50902``; the refit pass prints ``refit_epoch=...`` lines,
which these regexes deliberately do not match for validation metrics (there is none in a refit).
"""

from __future__ import annotations

_NUMBER = r"([0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)"

METRIC_DEFINITIONS: tuple[dict[str, str], ...] = (
    {"Name": "train:loss", "Regex": rf"(?:^|\s)epoch=\d+ train_loss={_NUMBER}"},
    {"Name": "validation:ndcg@10", "Regex": rf"val_ndcg@10={_NUMBER}"},
    {"Name": "validation:hr@10", "Regex": rf"val_hr@10={_NUMBER}"},
    {"Name": "train:samples_per_second", "Regex": rf"samples_per_second={_NUMBER}"},
)

# The objective a hyperparameter tuning job maximises.
TUNING_OBJECTIVE = "validation:ndcg@10"
