"""recsys: neural collaborative filtering for Amazon SageMaker, trained and served from one image."""

__version__ = "0.1.0"
