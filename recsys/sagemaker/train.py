"""The container's ``train``: the SageMaker training contract around ``run_training``.

Exit codes: 0 success (``output/success``), 1 a user error (its message in ``output/failure``),
2 an internal error (the traceback in ``output/failure``).
"""

from __future__ import annotations

import logging

from recsys.config import resolve_train_config
from recsys.errors import UserError
from recsys.sagemaker.contract import (
    CHANNEL_ITEMS,
    CHANNEL_TRAIN,
    CHANNEL_USERS,
    CHANNEL_VALIDATION,
    ContainerPaths,
    read_training_contract,
    write_failure,
    write_success,
)

logger = logging.getLogger(__name__)

EXIT_USER_ERROR = 1
EXIT_INTERNAL_ERROR = 2


def train(paths: ContainerPaths) -> int:
    """Run one training job under ``paths``; never raises, returns the process exit code."""
    try:
        # Imported here so that the CLI's --help does not pay for torch.
        from recsys.training.job import Channels, run_training

        contract = read_training_contract(paths)
        config = resolve_train_config(contract.hyperparameters)
        if not contract.resources.is_leader:
            logger.info(
                "host %s is not the leader; nothing to do on this host", contract.resources.current_host
            )
            write_success(paths)
            return 0
        channels = Channels(
            train=contract.channels[CHANNEL_TRAIN],
            validation=contract.channels.get(CHANNEL_VALIDATION),
            items=contract.channels.get(CHANNEL_ITEMS),
            users=contract.channels.get(CHANNEL_USERS),
        )
        outcome = run_training(
            channels, config, model_dir=paths.model_dir, output_data_dir=paths.output_data_dir
        )
    except UserError as exc:
        text = write_failure(paths, exc)
        logger.error("training failed: %s", text.strip())
        return EXIT_USER_ERROR
    except Exception as exc:  # anything else is our bug: keep the traceback for whoever reads it
        write_failure(paths, exc)
        logger.exception("training failed with an internal error")
        return EXIT_INTERNAL_ERROR
    write_success(paths)
    logger.info("model written to %s (best epoch %s)", paths.model_dir, outcome.metrics["best_epoch"])
    return 0
