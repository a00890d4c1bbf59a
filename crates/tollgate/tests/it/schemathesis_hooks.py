"""Schemathesis hooks for tollgate's API run (crates/tollgate/tests/it/schemathesis.rs).

Authenticates each generated request with the key that its operation's security requirement
names in the OpenAPI document: the `Key` scheme's scope `OPERATOR`, `ADMIN` or `API` picks the
demo server's operator key, the demo account's ADMIN key or its API key, passed in by the test
as TOLLGATE_ST_OPERATOR_KEY, TOLLGATE_ST_ADMIN_KEY and TOLLGATE_ST_API_KEY
(`<key_id>:<key_secret>`). An operation that also allows no key (`{}` among its requirements)
is sent with the key it names; one whose security names no key at all is sent without one. A
requirement this file does not understand stops the run: a new scheme or scope must be given a
key here, not silently sent without one.

Two more things a generator cannot guess: the `caller_key` of a submitted request (a customer key;
a random one is refused with 401 and the request's lifecycle is never reached), which positive
cases get as the demo API key; and the demo's own keys, which `DELETE /v1/keys/{key_id}` and
`DELETE /v1/admin/keys/{key_id}` must not revoke in the middle of the run. The TOML catalog body (`application/toml`) is sent as text.

Every answer's operation and status code is appended to the file TOLLGATE_ST_CALLS names, one
`<METHOD> <path template>\t<status>` line per call: the test checks from it that every operation
got at least one answer other than 401/403, i.e. that the keys set here were accepted.

Loaded by schemathesis through SCHEMATHESIS_HOOKS=<this file>.
"""

import os

import schemathesis
from schemathesis import GenerationMode

SCHEME = "Key"
CALLS = open(os.environ["TOLLGATE_ST_CALLS"], "a", buffering=1)
KEYS = {
    "OPERATOR": os.environ["TOLLGATE_ST_OPERATOR_KEY"],
    "ADMIN": os.environ["TOLLGATE_ST_ADMIN_KEY"],
    "API": os.environ["TOLLGATE_ST_API_KEY"],
}


def required_scope(operation):
    """The scope of the `Key` scheme the operation names, or None when it names no key."""
    raw = operation.definition.raw
    # An operation without `security` inherits the document's.
    security = raw["security"] if "security" in raw else operation.schema.raw_schema.get("security", [])
    named = [requirement for requirement in security if requirement != {}]
    if not named:
        return None
    for requirement in named:
        scopes = requirement.get(SCHEME)
        if set(requirement) == {SCHEME} and scopes and len(scopes) == 1 and scopes[0] in KEYS:
            return scopes[0]
    raise ValueError(f"{operation.label}: no key for the security requirement {security!r}")


# No caching: each operation gets the key of its own scope.
@schemathesis.auth(refresh_interval=None)
class ScopedKey:
    def get(self, case, ctx):
        scope = required_scope(ctx.operation)
        return None if scope is None else f"Key {KEYS[scope]}"

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Authorization"] = data


@schemathesis.hook
def after_call(ctx, case, response):
    CALLS.write(f"{case.operation.label}\t{response.status_code}\n")


@schemathesis.hook("map_case").apply_to(method="POST", path="/v1/requests")
def submit_as_the_demo_customer(ctx, case):
    if case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE:
        if isinstance(case.body, dict) and "caller_key" in case.body:
            case.body["caller_key"] = KEYS["API"]
    return case


DEMO_KEY_IDS = {key.split(":", 1)[0] for key in KEYS.values()}


def not_a_demo_key(case):
    return (case.path_parameters or {}).get("key_id") not in DEMO_KEY_IDS


@schemathesis.hook("filter_case").apply_to(method="DELETE", path="/v1/keys/{key_id}")
def keep_the_demo_keys(ctx, case):
    return not_a_demo_key(case)


@schemathesis.hook("filter_case").apply_to(method="DELETE", path="/v1/admin/keys/{key_id}")
def keep_the_demo_keys_from_the_operator(ctx, case):
    return not_a_demo_key(case)


# The catalog is a TOML document: a string, sent as is.
schemathesis.serializer.alias("application/toml", "text/plain")
