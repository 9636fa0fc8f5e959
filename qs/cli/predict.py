"""TEMPORARY: the predict commands still live in qs.predict (being moved here)."""

from ..predict import add_subcommands  # noqa: F401
