"""TEMPORARY: the register commands still live in qs.register (being moved here)."""

from ..register import add_subcommands  # noqa: F401
