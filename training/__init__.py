"""Training stage: the shared offline evaluation (protocol P1) and the models trained on the ETL output."""
