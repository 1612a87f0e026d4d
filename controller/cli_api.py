"""The CLI's client of the ops API: one httpx client that turns error answers back into modelroll errors, and
the options every verb over the API shares.

A message written for an HTTP caller names a route ("list them with GET /v1/rollouts"); a CLI user is told the
command instead.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any

import httpx
import typer

from modelroll.errors import Conflict, Forbidden, InvalidInput, ModelrollError, NotFound, Unauthorized, Unavailable
from modelroll.settings import Settings

_ERRORS: dict[int, type[ModelrollError]] = {400: InvalidInput, 401: Unauthorized, 403: Forbidden, 404: NotFound,
                                            409: Conflict, 428: Conflict, 503: Unavailable}

# Route → command, for messages the API writes for HTTP callers (most specific first).
_ROUTES = (
    (re.compile(r"GET /v1/rollouts/(\d+) and (?:retry with|send) its ETag"),
     r"read it again (`modelroll rollout status \1`) and retry"),
    (re.compile(r"GET /v1/rollouts/(\d+)"), r"`modelroll rollout status \1`"),
    (re.compile(r"GET /v1/rollouts\b"), "`modelroll rollout list`"),
    (re.compile(r"the controller lists jobs at GET /v1/optimizations\b"),
     "list them with `modelroll optimize list`"),
    (re.compile(r"GET /v1/optimizations\b"), "`modelroll optimize list`"),
    (re.compile(r"\(see /docs for the accepted shape\)"), "(see the verb's --help)"),
)


def for_cli(message: str) -> str:
    """The API's message with each HTTP route it names replaced by the CLI command that does the same."""
    for pattern, command in _ROUTES:
        message = pattern.sub(command, message)
    return message


UrlOpt = Annotated[str | None, typer.Option("--url", help="Controller base URL; default from settings.")]
TokenOpt = Annotated[str | None, typer.Option("--token", help="Bearer token; default $MODELROLL_TOKEN.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON answer.")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why; recorded in the event and the audit.")]


class Api:
    """A thin httpx client for the ops API that turns error answers back into modelroll errors."""

    def __init__(self, settings: Settings, url: str | None, token: str | None) -> None:
        self.base = (url or f"http://{settings.controller_host}:{settings.controller_port}").rstrip("/")
        token = token or os.environ.get("MODELROLL_TOKEN", "")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=self.base, headers=headers, timeout=30.0)

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            response = self.client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise Unavailable(f"cannot reach the controller at {self.base}: {exc}; "
                              "start it with `modelroll controller` or pass --url") from None
        if response.status_code >= 400:
            try:
                message = str(response.json().get("error") or response.text)
            except ValueError:
                message = response.text or f"HTTP {response.status_code}"
            raise _ERRORS.get(response.status_code, Unavailable)(for_cli(message))
        return response

    def command(self, rollout_id: int, verb: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST the command with the version just read as If-Match; the answer's `changed` says whether it did
        anything (pausing a paused rollout does not)."""
        etag = self.call("GET", f"/v1/rollouts/{rollout_id}").headers.get("etag", "")
        answer: dict[str, Any] = self.call("POST", f"/v1/rollouts/{rollout_id}/{verb}", json=body,
                                           headers={"If-Match": etag}).json()
        answer["changed"] = f'"{answer.get("version")}"' != etag.removeprefix("W/")
        return answer


