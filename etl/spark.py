"""One place that builds the SparkSession, so tests, the CLI and benchmarks run Spark alike."""
from __future__ import annotations

import os
import shutil
import sys

from etl.config import SparkConfig


def require_java17() -> None:
    """Fail early with an actionable message instead of a py4j stack trace."""
    java = shutil.which("java", path=os.path.join(os.environ["JAVA_HOME"], "bin")) \
        if os.environ.get("JAVA_HOME") else shutil.which("java")
    if not java:
        raise SystemExit("Java 17 is required by Spark and TorchServe but no `java` was found. "
                         "Install it (Debian: apt-get install -y openjdk-17-jre-headless) "
                         "or set JAVA_HOME.")


def get_spark(cfg: SparkConfig | None = None):
    """Return a SparkSession configured for deterministic, quiet local runs."""
    require_java17()
    from pyspark.sql import SparkSession

    cfg = cfg or SparkConfig()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    local = cfg.master.startswith("local")
    if local:  # stay on loopback: no other address is ours to bind
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.master(cfg.master)
        .appName(cfg.app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.sources.partitionOverwriteMode", "static")
        .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
        .config("spark.executor.extraJavaOptions", "-Duser.timezone=UTC")
    )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    return spark
