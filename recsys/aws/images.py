"""ECR: build and push the image (``recsys aws push``)."""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from recsys.aws.common import Echo, aws_errors
from recsys.errors import UserError


@dataclass(frozen=True)
class PushSpec:
    local_image: str
    repository: str
    tag: str


class DockerCli:
    """The docker command line, for the few things boto3 cannot do: log in, tag, push, build."""

    def __init__(self, executable: str | None = None) -> None:
        found = executable or shutil.which("docker")
        if found is None:
            raise UserError(
                "the docker command is not on PATH: install Docker (https://docs.docker.com/get-docker/) "
                "and retry."
            )
        self.executable = found

    def run(
        self, args: Sequence[str], *, stdin: str | None = None, capture: bool = True, timeout: float = 3600
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.executable, *args],
            input=stdin,
            capture_output=capture,
            text=True,
            timeout=timeout,
            check=False,
        )

    def require_engine(self) -> None:
        probe = self.run(["info", "--format", "{{.ServerVersion}}"], timeout=60)
        if probe.returncode != 0:
            lines = (probe.stderr or probe.stdout).strip().splitlines()
            detail = lines[-1] if lines else f"docker info exited with {probe.returncode}"
            raise UserError(
                f"no Docker engine answers ({detail}): start Docker (or point DOCKER_HOST at an engine) "
                f"and retry."
            )

    def require_image(self, image: str) -> None:
        if self.run(["image", "inspect", image], timeout=60).returncode != 0:
            raise UserError(f"no local image '{image}': build it with `make image` (or pass --image).")

    def checked(
        self, args: Sequence[str], what: str, *, stdin: str | None = None, capture: bool = True
    ) -> None:
        result = self.run(args, stdin=stdin, capture=capture)
        if result.returncode != 0:
            detail = (result.stderr or "").strip().splitlines()
            raise UserError(
                f"{what} failed (docker exited with {result.returncode})"
                + (f": {detail[-1]}" if detail else ".")
            )

    def compose(self) -> list[str]:
        """The docker compose command, looked up as SDK local mode does: the v2 plugin, else the
        standalone docker-compose."""
        if self.run(["compose", "version"], timeout=60).returncode == 0:
            return [self.executable, "compose"]
        standalone = shutil.which("docker-compose")
        if standalone is None:
            raise UserError(
                "local mode needs docker compose: install the compose plugin (`docker compose`) or "
                "docker-compose."
            )
        return [standalone]

    def with_train_command(self, image: str) -> str:
        """A one-layer child of ``image`` whose default command is ``train``.

        SDK v3 local mode starts the container with no command (its compose service has no
        ``command``), while SageMaker runs ``docker run IMAGE train``; without this the image's
        entry point prints its usage, exits 0, and local mode reports an empty success.
        """
        repository, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
        child = f"{repository}:{tag}-sagemaker-local"
        self.checked(
            ["build", "-q", "-t", child, "-"], f"building {child}", stdin=f'FROM {image}\nCMD ["train"]\n'
        )
        return child


def ensure_repository(ecr: Any, repository: str, echo: Echo) -> str:
    """The repository's URI, creating the repository (scan on push) when it does not exist."""
    try:
        found = ecr.describe_repositories(repositoryNames=[repository])["repositories"][0]
        return str(found["repositoryUri"])
    except ecr.exceptions.RepositoryNotFoundException:
        created = ecr.create_repository(
            repositoryName=repository, imageScanningConfiguration={"scanOnPush": True}
        )["repository"]
        echo(f"created ECR repository {created['repositoryUri']}")
        return str(created["repositoryUri"])


def push_image(session: Any, spec: PushSpec, docker: DockerCli, echo: Echo) -> str:
    """Tag ``spec.local_image`` as ``<account>.dkr.ecr.<region>.amazonaws.com/<repo>:<tag>`` and
    push it; returns that URI."""
    docker.require_engine()
    docker.require_image(spec.local_image)
    with aws_errors("push"):
        ecr = session.client("ecr")
        repository_uri = ensure_repository(ecr, spec.repository, echo)
        auth = ecr.get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(auth["authorizationToken"]).decode("utf-8").split(":", 1)
    # The password goes through stdin: never on a command line that `ps` shows.
    docker.checked(
        ["login", "--username", user, "--password-stdin", auth["proxyEndpoint"]],
        f"docker login to {auth['proxyEndpoint']}",
        stdin=password,
    )
    target = f"{repository_uri}:{spec.tag}"
    docker.checked(["tag", spec.local_image, target], f"docker tag {spec.local_image} {target}")
    echo(f"pushing {target}")
    docker.checked(["push", target], f"docker push {target}", capture=False)
    return target
