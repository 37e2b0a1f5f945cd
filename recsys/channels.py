"""The training job's channel names, as its InputDataConfig names them: spelled here only.

``recsys.sagemaker.contract`` publishes them as part of the container contract. They live in this
module, which imports nothing, so that the bottom layer (``recsys.data``, whose synthetic data is
written as channel directories) can use them without importing ``recsys.sagemaker``, a package
that itself imports ``recsys.data``.
"""

from __future__ import annotations

CHANNEL_TRAIN = "train"
CHANNEL_VALIDATION = "validation"
CHANNEL_ITEMS = "items"
CHANNEL_USERS = "users"
KNOWN_CHANNELS = (CHANNEL_TRAIN, CHANNEL_VALIDATION, CHANNEL_ITEMS, CHANNEL_USERS)
