"""The ``swv`` entry point. Heavy libraries (torch, transformers) are imported inside commands."""

from __future__ import annotations

import sys

import typer

from swv.cli import convert, data, env_cmd, eval_cmd, infer_cmd, plugins_cmd, recipe_cmd, train_cmd

app = typer.Typer(
    name="swv",
    help="Soundwave-style speech LLMs: recipes, plugins, training, inference and evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(plugins_cmd.app, name="plugins")
app.add_typer(recipe_cmd.app, name="recipe")
app.command("train")(train_cmd.train)
app.command("infer")(infer_cmd.infer)
app.command("eval")(eval_cmd.eval_cmd)
app.command("env")(env_cmd.env)
app.add_typer(convert.app, name="convert", help="Convert checkpoints (CTranslate2 Whisper, GGUF) to Hugging Face format.")
app.add_typer(data.app, name="data", help="Build, filter, augment and inspect manifests.")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; expected errors become one line on stderr and a non-zero exit."""
    from swv.cli.errors import debug_enabled, install_warning_format, report
    from swv.errors import SwvError

    install_warning_format()
    try:
        rc = app(args=argv, standalone_mode=False)
    except SwvError as exc:
        if debug_enabled():
            raise
        sys.exit(report(exc))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.Abort):
            print("aborted", file=sys.stderr)
            sys.exit(1)
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if isinstance(rc, int) and rc:
        sys.exit(rc)


if __name__ == "__main__":
    main()
