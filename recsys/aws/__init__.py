"""The engineer-side launcher behind ``recsys aws``, one module per AWS service.

Never needed by the image: the container's code (``recsys.sagemaker``, ``recsys.serving``) imports
nothing from here, and boto3 and the SageMaker SDK (the ``aws`` extra) load only when a command runs.
"""
