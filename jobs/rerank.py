"""`ray job submit -- python jobs/<script>.py [options]` runs the matching `rerank-ray` command
(the table in rerank_ray/stages.py) with the same options."""

import sys
from pathlib import Path

# Under `ray job submit --working-dir .` the package is the working dir, not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rerank_ray.cli import main  # noqa: E402
from rerank_ray.stages import command_of_entrypoint  # noqa: E402

if __name__ == "__main__":
    sys.exit(main([command_of_entrypoint(__file__).name, *sys.argv[1:]]))
