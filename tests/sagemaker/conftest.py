"""AWS stood in for by moto (S3, SageMaker, Application Auto Scaling): no real account is used."""
from __future__ import annotations

import pytest

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/recsys-sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/recsys:abc1234"
BUCKET = "recsys-models"


@pytest.fixture
def aws_env(monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION,
                 "AWS_REGION": REGION}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


@pytest.fixture
def moto_aws(aws_env):
    from moto import mock_aws
    with mock_aws():
        import boto3
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        yield


@pytest.fixture
def out_with_archives(tmp_path):
    """OUT/model-store with two version files. The control plane only moves them (the data
    path, a real archive served by the image, is tests/container)."""
    store = tmp_path / "model-store"
    store.mkdir()
    for v in ("3", "4"):
        (store / f"recsys-v{v}.mar").write_bytes(f"archive of version {v}\n".encode() * 100)
    return tmp_path
