"""spark-submit entry point for running the ETL CLI on EMR.

``etl/emr.py`` uploads this file next to the code zip; spark-submit runs it with the zip on
``--py-files``, so ``etl`` and ``common`` are importable from the zip. The arguments after the
script are exactly the local ``python -m etl`` arguments (e.g. ``prepare --events ...``).
"""
import sys

from etl.__main__ import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
