"""``recsys aws prepare`` against moto's SageMaker: the exact Processing job, its wait and its errors."""

from __future__ import annotations

import pytest

from tests.sagemaker.conftest import IMAGE_URI, ROLE_ARN, FakeAws, Run

# The launcher against a moto_server subprocess: left out of `make test-fast`.
pytestmark = pytest.mark.slow


def _prepare(*extra: str) -> list[str]:
    return ["prepare", "--image", IMAGE_URI, "--role", ROLE_ARN, "--input", "s3://bucket/raw/",
            "--output", "s3://bucket/prepared", "--job-name", "prep-1", *extra]  # fmt: skip


def _output(name: str) -> dict[str, object]:
    return {
        "OutputName": name,
        "S3Output": {
            "S3Uri": f"s3://bucket/prepared/{name}/",
            "LocalPath": f"/opt/ml/processing/output/{name}",
            "S3UploadMode": "EndOfJob",
        },
    }


def test_prepare_sends_the_exact_processing_job_and_prints_the_next_training_command(
    aws: FakeAws, recsys_aws: Run
) -> None:
    code, out, err = recsys_aws(
        *_prepare(
            "--items", "s3://bucket/items/", "--instance-count", "2", "--user-column", "visitor",
            "--min-user-interactions", "5", "--test-from", "2026-11-01T00:00:00Z",
            "--cold-user-fraction", "0.1",
        )
    )  # fmt: skip

    assert code == 0, err
    (sent,) = aws.sent("CreateProcessingJob")
    assert sent["AppSpecification"] == {
        "ImageUri": IMAGE_URI,
        "ContainerArguments": [
            "prepare", "--user-column", "visitor", "--min-user-interactions", "5",
            "--test-from", "2026-11-01T00:00:00Z", "--cold-user-fraction", "0.1",
        ],
    }  # fmt: skip
    assert sent["ProcessingInputs"] == [
        {
            "InputName": "interactions",
            "S3Input": {
                "S3Uri": "s3://bucket/raw/",
                "LocalPath": "/opt/ml/processing/input/interactions",
                "S3DataType": "S3Prefix",
                "S3InputMode": "File",
                "S3DataDistributionType": "ShardedByS3Key",  # two instances split the raw files
            },
        },
        {
            "InputName": "items",
            "S3Input": {
                "S3Uri": "s3://bucket/items/",
                "LocalPath": "/opt/ml/processing/input/items",
                "S3DataType": "S3Prefix",
                "S3InputMode": "File",
                "S3DataDistributionType": "FullyReplicated",
            },
        },
    ]
    names = ["train", "validation", "test", "cold", "items", "report"]
    assert sent["ProcessingOutputConfig"] == {"Outputs": [_output(n) for n in names]}
    assert sent["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 2
    assert sent["RoleArn"] == ROLE_ARN
    assert "processing job prep-1 completed" in out
    assert "report: s3://bucket/prepared/report/data_report.md" in out
    assert (
        f"next: recsys aws train --image {IMAGE_URI} --train s3://bucket/prepared/train/ "
        "--validation s3://bucket/prepared/validation/ --items s3://bucket/prepared/items/" in out
    )


def test_every_channel_a_training_job_reads_is_an_output_of_prepare() -> None:
    # The launcher hands prepare's outputs to `recsys aws train` by name: they must be the channels'.
    from recsys.sagemaker.contract import KNOWN_CHANNELS
    from recsys.sagemaker.process import ATTRIBUTE_INPUTS, output_names

    assert set(KNOWN_CHANNELS) <= set(output_names(cold=False, attributes=ATTRIBUTE_INPUTS))


def test_a_failed_processing_job_exits_1_with_the_containers_message(aws: FakeAws, recsys_aws: Run) -> None:
    aws.patch_response(
        "DescribeProcessingJob",
        {"ProcessingJobStatus": "Failed", "ExitMessage": "log.csv: no column 'item_id' (columns: movie)"},
    )

    code, _, err = recsys_aws(*_prepare())

    assert code == 1
    assert "processing job prep-1 is Failed: log.csv: no column 'item_id' (columns: movie)" in err
    assert "Traceback" not in err


def test_bad_settings_are_refused_before_any_request(aws: FakeAws, recsys_aws: Run) -> None:
    code, _, err = recsys_aws(*_prepare("--cold-user-fraction", "1.5"))
    assert code == 1 and "cold_user_fraction" in err
    code, _, err = recsys_aws(*_prepare("--test-from", "next tuesday"))
    assert code == 1 and "--test-from" in err and "'next tuesday'" in err
    assert aws.sent("CreateProcessingJob") == []
