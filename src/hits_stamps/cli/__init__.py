"""The `hits-stamps` command line.

Each module in this package adds the commands of one concern to `app` (see `_app.py`); `main`
turns user-facing errors into one line on stderr and a non-zero exit, without a traceback.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import warnings

from rich.markup import escape

from hits_stamps.cli._app import app, console_err
from hits_stamps.errors import HitsStampsError

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_mod}")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    console_err.print(f"[yellow]warning:[/yellow] {escape(str(message))}", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    warnings.showwarning = _show_warning
    try:
        app(args=argv, prog_name="hits-stamps", standalone_mode=False)
    except HitsStampsError as exc:
        console_err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console_err.print("[red]interrupted[/red]; finished outputs are kept")
        return 130
    except SystemExit as exc:  # typer/click exits (e.g. --help)
        return int(exc.code or 0)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())


def run_main() -> None:
    """Console-script wrapper: exit with `main`'s code."""
    sys.exit(main())
