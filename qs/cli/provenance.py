"""TEMPORARY: the provenance commands still live in qs.provenance (being moved here)."""

from ..provenance import add_subcommands  # noqa: F401
