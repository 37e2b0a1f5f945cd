"""A local training tree from files named on the command line (``recsys train --train PATH ...``).

SageMaker hands a job its channels as directories under ``input/data/`` and its hyperparameters as
strings in ``input/config/hyperparameters.json``. Here the same tree is laid out from a user's own
files, so that the job they run locally is exactly the one SageMaker would run:

- each channel directory holds symbolic links to the files and directories given for it (no
  copy, however large the data); a link's name is the file's own, so its extension still names
  its format;
- ``hyperparameters.json`` holds the ``-H`` values as strings, as SageMaker writes them;
  ``inputdataconfig.json`` declares exactly the given channels (File mode);
- only what this module laid out is ever replaced: a channel directory that holds anything but
  links (someone's real files) is refused, never deleted.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from recsys.errors import UserError
from recsys.sagemaker.contract import KNOWN_CHANNELS, ContainerPaths

# The first local tree of a checkout: the one `make run` trains in and `make serve` serves.
DEFAULT_LOCAL_BASE_DIR = Path("local/opt_ml")


@dataclass(frozen=True)
class LocalJob:
    """What to train on: paths per channel (``train`` required) and hyperparameters as strings."""

    channels: Mapping[str, Sequence[Path]]
    hyperparameters: Mapping[str, str] = field(default_factory=dict)


def _only_links(directory: Path) -> bool:
    return all(entry.is_symlink() for entry in directory.iterdir())


def _link_name(path: Path, taken: set[str]) -> str:
    # The channel readers skip names starting with '.' or '_' (_SUCCESS, .DS_Store): a file the
    # user named explicitly must not be skipped for its name.
    name = path.name if not path.name.startswith((".", "_")) else f"part-{path.name.lstrip('._') or 'data'}"
    base, counter = name, 2
    while name in taken:
        name = f"{counter}-{base}"
        counter += 1
    taken.add(name)
    return name


def _clear(channel: str, directory: Path) -> None:
    """Remove a channel directory that this module laid out; refuse anything else."""
    if directory.is_symlink() or directory.is_file():
        raise UserError(
            f"{directory} (channel '{channel}') is not a directory of links laid out by `recsys train "
            "--train`; refusing to replace it. Move it, or pass another --base-dir."
        )
    if not directory.exists():
        return
    if not _only_links(directory):
        raise UserError(
            f"{directory} (channel '{channel}') holds files that `recsys train --train` did not link "
            "there; refusing to replace them. Move them, pass them as the channel "
            f"(--{channel} {directory}), or pass another --base-dir."
        )
    shutil.rmtree(directory)


def lay_out_job(paths: ContainerPaths, job: LocalJob) -> None:
    """Write the training tree of ``job`` under ``paths``; raises ``UserError`` naming a bad path."""
    unknown = sorted(set(job.channels) - set(KNOWN_CHANNELS))
    if unknown:
        raise ValueError(f"unknown channels {unknown}")  # the CLI offers only the known ones
    if not job.channels.get("train"):
        raise UserError("give the interactions to train on with --train PATH (a file or a directory).")
    for channel, sources in job.channels.items():
        for source in sources:
            if not source.exists():
                raise UserError(f"--{channel}: {source} does not exist.")
    # Resolved before anything is cleared: a path may be one of the links about to be removed.
    targets = {channel: [(s, s.resolve()) for s in sources] for channel, sources in job.channels.items()}
    in_place: set[str] = set()
    for channel in KNOWN_CHANNELS:
        directory = paths.channel_dir(channel)
        given = targets.get(channel, [])
        if len(given) == 1 and directory.exists() and given[0][1] == directory.resolve():
            in_place.add(channel)  # the channel directory itself was named: use it as it is
            continue
        _clear(channel, directory)
    for channel, given in targets.items():
        if channel in in_place or not given:
            continue
        directory = paths.channel_dir(channel)
        directory.mkdir(parents=True)
        taken: set[str] = set()
        for source, target in given:
            os.symlink(target, directory / _link_name(source, taken))
    paths.input_config_dir.mkdir(parents=True, exist_ok=True)
    paths.hyperparameters_file.write_text(
        json.dumps({name: str(value) for name, value in job.hyperparameters.items()}, indent=1) + "\n",
        encoding="utf-8",
    )
    declared = {
        channel: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"}
        for channel, sources in job.channels.items()
        if sources
    }
    paths.input_data_config_file.write_text(json.dumps(declared, indent=1) + "\n", encoding="utf-8")


def link_inputs(root: Path, inputs: Mapping[str, Path]) -> None:
    """Lay out Processing inputs under ``root``: ``root/<name>`` holds a link to each given path
    (a directory of links, replaced only when this function laid it out)."""
    for name, source in inputs.items():
        if not source.exists():
            raise UserError(f"--{name}: {source} does not exist.")
        directory = root / name
        _clear(name, directory)
        directory.mkdir(parents=True)
        (directory / _link_name(source, set())).symlink_to(source.resolve())
