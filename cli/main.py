"""The ``swv`` entry point. Heavy libraries (torch, transformers) are imported inside commands."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from swv.cli import (
    convert,
    data,
    demo_cmd,
    env_cmd,
    eval_cmd,
    infer_cmd,
    model_cmd,
    plot_cmd,
    plugins_cmd,
    recipe_cmd,
    serve_cmd,
    train_cmd,
)
from swv.cli.commands import SwvTyper

app = SwvTyper(
    name="swv",
    help="Soundwave-style speech LLMs: recipes, plugins, training, inference and evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # every command and sub-command inherits -h as well as --help
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from swv import __version__

        typer.echo(f"swv {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", help="Print swv's version and exit.", callback=_print_version, is_eager=True)
    ] = False,
) -> None:
    """Soundwave-style speech LLMs: recipes, plugins, training, inference and evaluation."""


app.add_typer(plugins_cmd.app, name="plugins")
app.add_typer(recipe_cmd.app, name="recipe")
app.command("train")(train_cmd.train)
app.command("infer")(infer_cmd.infer)
app.command("eval")(eval_cmd.eval_cmd)
app.command("plot")(plot_cmd.plot)
app.command("serve")(serve_cmd.serve)
app.command("export")(model_cmd.export)
app.add_typer(model_cmd.import_app, name="import")
app.command("env")(env_cmd.env)
app.command("demo")(demo_cmd.demo)
app.add_typer(convert.app, name="convert", help="Convert checkpoints (CTranslate2 Whisper, GGUF) to Hugging Face format.")
app.add_typer(data.app, name="data", help="Build, filter, augment and inspect manifests.")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; expected errors become one line on stderr and a non-zero exit.

    Click handles usage errors itself (usage line, exit 2); ``SwvError`` becomes
    ``error: <message>`` with the error's exit code, an ``OSError`` of the environment
    (permissions, full or read-only disk, file vs directory) ``error: <path>: <reason>``
    with exit 1, and an unpickling or template-sandbox refusal one line too (:func:`refusal`);
    ``SWV_DEBUG=1`` keeps the traceback.
    """
    from swv.cli.errors import (
        debug_enabled,
        environment_error,
        install_warning_format,
        refusal,
        report,
        report_os_error,
    )
    from swv.core.errors import SwvError

    install_warning_format()
    try:
        app(args=argv, prog_name="swv")
    except SwvError as exc:
        if debug_enabled():
            raise
        sys.exit(report(exc))
    except OSError as exc:
        if debug_enabled() or not environment_error(exc):
            raise
        sys.exit(report_os_error(exc))
    except Exception as exc:
        refused = refusal(exc)
        if debug_enabled() or refused is None:
            raise
        sys.exit(report(refused))


if __name__ == "__main__":
    main()
