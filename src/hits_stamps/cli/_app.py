"""The typer application shared by the command modules."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    name="hits-stamps",
    help="Classify, quantify uncertainty for, generate, simulate and serve HiTS difference stamps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
console_err = Console(stderr=True)
