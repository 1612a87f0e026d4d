"""The one exception tree of modelroll; each class carries its HTTP status.

    ModelrollError (500)
    ├── InvalidInput (400)   bad request body, tensor, spec, CLI argument
    ├── Unauthorized (401)   no or unknown bearer token
    ├── Forbidden (403)      token lacks the role
    ├── NotFound (404)       unknown model, variant, rollout, job
    ├── RequestTimeout (408) the request's body did not arrive in time
    ├── Conflict (409)       stale version, duplicate name, illegal transition
    │   └── Tampered         a stored artifact no longer matches its sha256
    ├── PayloadTooLarge (413) a request body over the limit
    └── Unavailable (503)    a backend (database, Redis, runner) cannot be reached

Messages say what was wrong and what is accepted; HTTP layers write them as
`{"error": message}` (the V2 protocol's error shape).
"""

from __future__ import annotations


class ModelrollError(Exception):
    status_code: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ModelrollError):
    status_code = 400


class Unauthorized(ModelrollError):
    status_code = 401


class Forbidden(ModelrollError):
    status_code = 403


class NotFound(ModelrollError):
    status_code = 404


class Conflict(ModelrollError):
    status_code = 409


class Tampered(Conflict):
    """Stored bytes conflict with their recorded hash: retrying cannot help, re-registering can."""


class RequestTimeout(ModelrollError):
    status_code = 408


class PayloadTooLarge(ModelrollError):
    status_code = 413


class Unavailable(ModelrollError):
    status_code = 503
