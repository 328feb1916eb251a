"""Stage 1: Spark jobs that turn raw interaction logs into training data (see README)."""
