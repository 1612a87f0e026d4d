"""`modelroll apply -f FILE`, `modelroll get rollout REF -o yaml` and `modelroll rollout approve N --reason`.

apply checks every document of the file first (schema, types, lines) and applies nothing if one is wrong (exit 2);
then registers kind Model documents here (they name files on this machine) and sends the Rollout documents to the
controller (POST /v1/apply), which creates, changes or leaves each rollout by its metadata.name.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from controller.cli_api import Api, JsonOpt, TokenOpt, UrlOpt
from modelroll import manifest
from modelroll.errors import InvalidInput, ModelrollError, PayloadTooLarge
from modelroll.settings import Settings
from modelroll.yaml_lines import MAX_DOCUMENT_BYTES

FileOpt = Annotated[str, typer.Option("-f", "--filename", help="A YAML or JSON file of documents; - reads stdin.")]


def _read(filename: str) -> tuple[bytes, str, Path]:
    """The file's bytes (refused over 1 MiB before reading), its name for messages, its folder for relative paths."""
    if filename == "-":
        data = sys.stdin.buffer.read(MAX_DOCUMENT_BYTES + 1)
        if len(data) > MAX_DOCUMENT_BYTES:
            raise PayloadTooLarge(f"stdin holds over {MAX_DOCUMENT_BYTES} bytes (1 MiB), the most a spec document "
                                  "may have")
        return data, "<stdin>", Path.cwd()
    path = Path(filename)
    if not path.is_file():
        raise InvalidInput(f"-f {filename}: no such file; give a YAML or JSON file of modelroll/v1 documents")
    size = path.stat().st_size
    if size > MAX_DOCUMENT_BYTES:
        raise PayloadTooLarge(f"{filename} is {size} bytes, over the {MAX_DOCUMENT_BYTES} bytes (1 MiB) a spec "
                              "document may have")
    return path.read_bytes(), filename, path.resolve().parent


def _with_file(message: str, source: str) -> str:
    """The controller's "line 12: ..." as "rollout.yaml:12: ...", like the checks made here."""
    return re.sub(r"\bline (\d+): ", lambda m: f"{source}:{m.group(1)}: ", message)


def _describe(result: dict[str, Any]) -> str:
    what = f"{result['kind'].lower()} {result['name']!r} {result['action']}"
    if result.get("changed"):
        what += f" ({', '.join(result['changed'])})"
    r = result.get("rollout")
    if r:
        what += f": rollout {r['id']} of {r['model']} ({r['candidate']} vs {r['baseline']}), {r['phase']}"
    return what


def _apply_models(settings: Settings, documents: list[manifest.Document], base_dir: Path,
                  dry_run: bool) -> list[dict[str, Any]]:
    from modelroll.apply_model import apply_model
    from modelroll.artifacts import ArtifactStore
    from modelroll.cli import session_scope
    from modelroll.cli_gc import cli_actor
    from modelroll.inputs import LOCAL

    models = [d for d in documents if isinstance(d, manifest.ModelDocument)]
    if not models:
        return []
    store = ArtifactStore.from_settings(settings)
    out = []
    with session_scope(settings) as session:
        for doc in models:
            done = apply_model(session, store, doc, policy=LOCAL, base_dir=base_dir, actor=cli_actor(),
                               dry_run=dry_run)
            out.append({"kind": "Model", "name": done.name, "action": done.action, "changed": list(done.changed),
                        "rollout": None})
        if dry_run:
            session.rollback()
    return out


def register(app: typer.Typer, rollout: typer.Typer, settings_of: Callable[[typer.Context], Settings]) -> None:
    get = typer.Typer(help="Print what the controller holds as documents `apply` takes.", no_args_is_help=True)
    app.add_typer(get, name="get")

    @app.command("apply")
    def apply(ctx: typer.Context, filename: FileOpt,
              dry_run: Annotated[bool, typer.Option("--dry-run", help="Check and report; change nothing.")] = False,
              url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
        """Make what the file says true: kind Model registers models and variants from files (here), kind Rollout
        creates or changes rollouts (through the controller), each found again by metadata.name. Applying the same
        file twice changes nothing; a change a running rollout cannot take is refused with its field and line.
        Exit 0 applied (or nothing to change), 1 refused, 2 the file is wrong (nothing applied)."""
        settings = settings_of(ctx)
        data, source, base_dir = _read(filename)
        documents = manifest.parse(data, source)
        results = _apply_models(settings, documents, base_dir, dry_run)
        if any(isinstance(d, manifest.RolloutDocument) for d in documents):
            params: dict[str, Any] = {"kinds": "Rollout"}
            if dry_run:
                params["dry_run"] = "true"
            try:
                answer = Api(settings, url, token).call("POST", "/v1/apply", content=data, params=params,
                                                        headers={"Content-Type": "application/yaml"}).json()
            except ModelrollError as exc:
                raise type(exc)(_with_file(exc.message, source)) from None
            results += [r for r in answer["results"] if r["action"] != "skipped"]
        if as_json:
            typer.echo(json.dumps({"dry_run": dry_run, "results": results}, indent=2))
            return
        for result in results:
            typer.echo(_describe(result) + (" (dry run)" if dry_run else ""))

    @get.command("rollout")
    def get_rollout(ctx: typer.Context,
                    ref: Annotated[str, typer.Argument(help="Rollout id, or the metadata.name it was applied under.")],
                    output: Annotated[str, typer.Option("-o", "--output", help="yaml or json.")] = "yaml",
                    url: UrlOpt = None, token: TokenOpt = None) -> None:
        """Print the rollout as the document `apply` takes (its spec) with its status (which apply ignores)."""
        if output not in ("yaml", "json"):
            raise InvalidInput(f"-o {output!r} is not accepted: use yaml or json")
        response = Api(settings_of(ctx), url, token).call("GET", f"/v1/rollouts/{ref}/document",
                                                          params={"format": output})
        typer.echo(response.text.rstrip("\n") if output == "yaml" else json.dumps(response.json(), indent=2))

    @rollout.command("approve")
    def approve(ctx: typer.Context, rollout_id: Annotated[int, typer.Argument(help="Rollout id.")],
                reason: Annotated[str, typer.Option("--reason", help="Why it may go on; recorded with your name.")],
                url: UrlOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
        """Approve a rollout waiting at an approval step: it goes on to the next step (or promotes, after the last).
        Exit 1 if it is not waiting (the message says its phase)."""
        if not reason.strip():
            raise InvalidInput("--reason must say why the rollout may go on (it is recorded with your name)")
        r = Api(settings_of(ctx), url, token).command(rollout_id, "approve", {"reason": reason})
        if as_json:
            typer.echo(json.dumps(r, indent=2, sort_keys=True))
            return
        typer.echo(f"approved rollout {r['id']} of {r['model']}: {r['phase']}, step {r['step_index'] + 1} of "
                   f"{r['steps_total']}; {r['reason']}")
