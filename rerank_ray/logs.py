"""What a command prints: rerank-ray's stage lines, real warnings, and no library chatter.

A normal run prints its stage lines (``rerank-ray: stage embed: done in 3.1 s``), Ray Data's
progress bars on a terminal, warnings and errors, and the result. Known-harmless messages are
switched off where they come from, with each library's own switch, and ``--verbose`` turns
every one of them back on:

* Ray Data's INFO lines (execution plans, "execution finished", "Data sink … finished") stay
  in the session's ``logs/ray-data/ray-data.log`` but leave the console: Ray Data reads its
  logging config from ``RAY_DATA_LOGGING_CONFIG`` (:func:`ray_data_logging_config`), which
  must be set before ``ray.data`` is imported.
* Ray Data's "cluster currently does not have any available CPUs … will hang" is printed
  when a dataset starts while the previous stage's actors still hold every CPU; they are
  being released, and the pipeline waits for nothing else (:class:`KnownHarmless`).
* Ray's notice that token authentication is on by default (the token exists; the mode is
  unset): Ray's authentication logger is set to errors only.
* Ray Data's notice that it shortens a long operator name in a progress bar.
* transformers' and the Hub's "Loading weights" bars, in the driver and in the actors:
  ``HF_HUB_DISABLE_PROGRESS_BARS`` (read by both at import; Ray's workers inherit it).
* Other libraries' INFO lines (matplotlib's "generated new fontManager"): the root logger
  is at WARNING; rerank-ray's own logger is at INFO.

Not switched off: Ray's core worker logs, from C++, that a Ray Data actor "has constructor
arguments in the object store and max_restarts > 0" (every actor pool of Ray 2.60 does); Ray
offers no switch for that one line short of hiding every core-worker error.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile

#: Messages that are harmless in a rerank-ray run, whatever the run (see the module doc).
HARMLESS_MESSAGES = (
    "currently does not have any available CPUs",
    "Truncating long operator name",
)

#: Loggers that narrate what is not a problem, at the level from which they are shown.
LIBRARY_LEVELS = {
    "ray._private.authentication.authentication_token_setup": logging.ERROR,
}


class KnownHarmless(logging.Filter):
    """Drops records whose message holds one of :data:`HARMLESS_MESSAGES`.

    Example:
        >>> record = logging.makeLogRecord({"msg": "Warning: The Ray cluster currently does"
        ...                                 " not have any available CPUs."})
        >>> KnownHarmless().filter(record)
        False
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(needle in message for needle in HARMLESS_MESSAGES)


class _Formatter(logging.Formatter):
    """``rerank-ray: message`` for this package; ``logger: level: message`` for others."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name.split(".")[0] == "rerank_ray":
            return f"rerank-ray: {record.getMessage()}"
        return f"{record.name}: {record.levelname.lower()}: {record.getMessage()}"


def ray_data_logging_config() -> str:
    """A Ray Data logging config file: everything to the session's log file, as Ray Data's
    default does, and WARNING and above, less :class:`KnownHarmless`, to the console."""
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "ray": {"format": "%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"}
        },
        "filters": {
            "console_filter": {"()": "ray.data._internal.logging.HiddenRecordFilter"},
            "harmless": {"()": "rerank_ray.logs.KnownHarmless"},
        },
        "handlers": {
            "file": {
                "class": "ray.data._internal.logging.SessionFileHandler",
                "formatter": "ray",
                "filename": "ray-data.log",
            },
            "console": {
                "class": "ray._private.log.PlainRayHandler",
                "formatter": "ray",
                "level": "WARNING",
                "filters": ["console_filter", "harmless"],
            },
        },
        "loggers": {
            "ray.data": {"level": "DEBUG", "handlers": ["file", "console"], "propagate": False}
        },
    }
    text = json.dumps(config, indent=1)  # JSON is YAML
    folder = os.path.join(tempfile.gettempdir(), f"rerank-ray-{os.getuid()}")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "ray-data-logging.yaml")
    try:
        with open(path, encoding="utf-8") as handle:
            current = handle.read()
    except FileNotFoundError:
        current = None
    if current != text:
        staging = f"{path}.{os.getpid()}"
        with open(staging, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(staging, path)
    return path


def configure(quiet: bool = False, verbose: bool = False) -> None:
    """Set up what a command prints (call before Ray or Ray Data is imported).

    ``quiet``: only warnings, errors and the result. ``verbose``: every library's messages.
    """
    root = logging.getLogger()
    # Ours replaces an earlier call's; handlers others installed (a test's capture) stay.
    root.handlers[:] = [h for h in root.handlers if not getattr(h, "rerank_ray", False)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    handler.rerank_ray = True
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("rerank_ray").setLevel(logging.WARNING if quiet else logging.INFO)
    if verbose:
        return
    for name, level in LIBRARY_LEVELS.items():
        logging.getLogger(name).setLevel(level)
    if "ray.data" not in sys.modules:
        os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", ray_data_logging_config())
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
