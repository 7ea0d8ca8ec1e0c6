"""Entrypoint for `ray job submit -- python jobs/rerank.py [options]`: `rerank-ray rerank`."""

import sys
from pathlib import Path

# Under `ray job submit --working-dir .` the package is the working dir, not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rerank_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["rerank", *sys.argv[1:]]))
