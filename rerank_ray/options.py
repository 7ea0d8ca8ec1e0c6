"""Options, each declared once: a config dataclass field that carries its flag and help.

A config dataclass declares a user-facing option with :func:`option`. Everything else is
generated from those declarations: the CLI parser (:func:`add_arguments`), the dotted path each
parsed flag sets in :class:`~rerank_ray.config.RunConfig`, the flags whose values are local
paths (``submit`` makes them absolute) and the flag an error about a field is shown as
(:func:`flag_of`). A field that holds another config dataclass (``RunConfig.compute``) is a
section: its options are found by walking into it.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Limits:
    ...     top_k: int = option(10, "--top-k", "passages per query", type=int, metavar="K")
    >>> [(path, spec.flag) for path, spec in walk(Limits)]
    [('top_k', '--top-k')]
    >>> flag_of(Limits, "top_k")
    '--top-k'
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import MISSING


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """How a config field appears on the command line.

    Args:
        flag: The flag, e.g. ``--top-k``; for a boolean option that defaults to ``True``, the
            flag that turns it off (``--no-cache``).
        help: One line for ``--help``; the default is appended unless the line names one.
        type: Converts the flag's text (``int``, ``float``); ``None``: kept as text.
        metavar: The value's placeholder in ``--help``.
        choices: The values allowed.
        path: The value may be a local path (``submit`` makes it absolute before it travels).
        aliases: Other spellings of the flag.
        group: The ``--help`` section; ``None``: the section's (:data:`SECTION_GROUPS`).
        repeat: The flag may be given several times; the field holds every value, in order.
    """

    flag: str
    help: str
    type: Callable | None = None
    metavar: str | None = None
    choices: tuple | None = None
    path: bool = False
    aliases: tuple[str, ...] = ()
    group: str | None = None
    repeat: bool = False


def option(default=MISSING, flag: str = "", help: str = "", **spec) -> dataclasses.Field:
    """A dataclass field that is also a command-line option (see :class:`OptionSpec`)."""
    return dataclasses.field(default=default, metadata={"option": OptionSpec(flag, help, **spec)})


def walk(cls: type, prefix: str = "") -> Iterator[tuple[str, OptionSpec]]:
    """``(dotted path, spec)`` of every option of ``cls`` and of its sections, in order."""
    for field in dataclasses.fields(cls):
        spec = field.metadata.get("option")
        if spec is not None:
            yield prefix + field.name, spec
        elif dataclasses.is_dataclass(field.default_factory):
            yield from walk(field.default_factory, f"{prefix}{field.name}.")


def _field_default(cls: type, path: str):
    section, _, name = path.rpartition(".")
    owner = cls
    for part in filter(None, section.split(".")):
        owner = next(f for f in dataclasses.fields(owner) if f.name == part).default_factory
    return next(f for f in dataclasses.fields(owner) if f.name == name).default


def flags_of(owner: type, name: str) -> tuple[str, ...]:
    """Every spelling of the flag of ``owner``'s field ``name``; ``()`` if it is no option."""
    for field in dataclasses.fields(owner):
        if field.name == name and "option" in field.metadata:
            spec = field.metadata["option"]
            return (spec.flag, *spec.aliases)
    return ()


def flag_of(owner: type, name: str) -> str:
    """The flag of ``owner``'s field ``name``; the field itself when it is not an option."""
    return (*flags_of(owner, name), name)[0]


def path_flags(cls: type) -> set[str]:
    """Every spelling of the flags whose values may be local paths."""
    return {flag for _, spec in walk(cls) if spec.path for flag in (spec.flag, *spec.aliases)}


def _argument_type(convert: Callable) -> Callable:
    """``convert`` as an argparse type: the ``ValueError`` of a converter of this package
    becomes the reason argparse shows (it says what is accepted); ``int`` and ``float`` keep
    argparse's own message, which names the type."""
    if convert in (int, float):
        return convert

    def converted(text: str):
        try:
            return convert(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return converted


def add_arguments(parser: argparse.ArgumentParser, cls: type, groups: dict[str, str]) -> None:
    """Add one argument per option of ``cls`` to ``parser``, its ``dest`` the dotted path.

    Defaults are not set: a parsed namespace holds only what was typed, so that options given
    to a stage override the config recorded in its run directory and nothing else does.
    ``groups`` maps a section (the first part of a path) to its ``--help`` group title; the
    groups appear in its order.
    """
    made = {title: parser.add_argument_group(title) for title in dict.fromkeys(groups.values())}
    for path, spec in walk(cls):
        group = made[spec.group or groups[path.partition(".")[0] if "." in path else ""]]
        default = _field_default(cls, path)
        kwargs: dict = {"dest": path, "default": argparse.SUPPRESS}
        if isinstance(default, bool):
            kwargs["action"] = "store_false" if default else "store_true"
            kwargs["help"] = spec.help
        else:
            if spec.repeat:
                kwargs["action"] = "append"
            for name in ("metavar", "choices"):
                if getattr(spec, name) is not None:
                    kwargs[name] = getattr(spec, name)
            if spec.type is not None:
                kwargs["type"] = _argument_type(spec.type)
            if spec.metavar is None and spec.choices is None:
                kwargs["metavar"] = spec.flag.lstrip("-").upper()
            shown = default not in (None, MISSING) and "default" not in spec.help
            kwargs["help"] = f"{spec.help} (default: {default})" if shown else spec.help
        group.add_argument(spec.flag, *spec.aliases, **kwargs)
