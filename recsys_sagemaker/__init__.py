"""SageMaker endpoints for the recommender through boto3 (``python -m recsys_sagemaker``).

Deliberately not importable as ``sagemaker``: that name belongs to the AWS SDK. See
docs/sagemaker.md.
"""
