"""TEMPORARY: the report commands still live in qs.report (being moved here)."""

from ..report import add_subcommands  # noqa: F401
