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


def _usage_error_types() -> tuple[type[BaseException], ...]:
    """Click's exception base classes: typer >= 0.29 vendors click as `typer._click`, older typer uses click."""
    types: list[type[BaseException]] = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            types.append(importlib.import_module(name).ClickException)
        except (ImportError, AttributeError):
            continue
    return tuple(types)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _usage_error(exc: BaseException) -> int:
    """Print a click/typer usage error (unknown option, bad value, missing argument) as one line."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # `hits-stamps` or a group alone: the help text
        exc.show()
        return 2
    ctx = getattr(exc, "ctx", None)
    where = f"{ctx.command_path}: " if ctx is not None else ""
    hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
    console_err.print(f"[red]error:[/red] {escape(where + _one_line(exc.format_message()) + hint)}",
                      highlight=False, soft_wrap=True)
    return int(getattr(exc, "exit_code", 2) or 2)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code.

    User-facing errors (HitsStampsError), usage errors of the option parser, and operating-system
    errors (a full disk, a read-only folder, a missing permission) are one line on stderr and a
    non-zero exit; only a bug in hits-stamps itself shows a traceback.
    """
    warnings.showwarning = _show_warning
    usage_errors = _usage_error_types()
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
    except usage_errors as exc:
        return _usage_error(exc)
    except OSError as exc:  # disk full, read-only folder, permission denied, ...
        name = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        console_err.print(f"[red]error:[/red] {escape(name + _one_line(exc.strerror or exc))}",
                          highlight=False, soft_wrap=True)
        return 1
    except MemoryError:
        console_err.print("[red]error:[/red] out of memory; use a smaller input, --limit or a smaller batch",
                          highlight=False, soft_wrap=True)
        return 1
    except Exception as exc:  # typer's own Abort / Exit (Ctrl-C at a prompt, typer.Exit(code))
        if type(exc).__name__ == "Exit" and hasattr(exc, "exit_code"):
            return int(exc.exit_code)
        if type(exc).__name__ == "Abort":
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())


def run_main() -> None:
    """Console-script wrapper: exit with `main`'s code."""
    sys.exit(main())
