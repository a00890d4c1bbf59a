"""fal's official Python client (`fal-client` from PyPI) against tollgate's gateway.

Run by crates/tollgate-gateway/tests/it/fal_client.rs as

    python cases.py <case> '<JSON arguments>'

with FAL_KEY (a tollgate customer key), FAL_QUEUE_RUN_HOST and FAL_RUN_HOST (the gateway's
queue and direct listeners, host:port) and SSL_CERT_FILE (the CA of the test's certificate,
which httpx trusts) in the environment before the process starts: fal_client reads its hosts
once, when it is imported.

Every line written to stdout is one JSON object: first {"event": "ready", ...}, then what the
case saw, last {"event": "done", ...}. A case that steps (`lifecycle`) waits for a line "go"
on stdin between its steps, while the Rust test moves the gateway on. Only the client's HTTP
errors (FalClientHTTPError) are caught and reported as outcomes; anything else fails the run.
"""

import json
import sys
import time

import fal_client
from fal_client import client as fal_client_module


def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def step():
    line = sys.stdin.readline()
    if line.strip() != "go":
        raise SystemExit(f"expected 'go' on stdin, got {line!r}")


def status_json(status):
    """One of fal_client's status objects, as the test checks it."""
    if isinstance(status, fal_client.Queued):
        return {"type": "Queued", "position": status.position}
    if isinstance(status, fal_client.InProgress):
        return {"type": "InProgress", "logs": status.logs}
    if isinstance(status, fal_client.Completed):
        return {
            "type": "Completed",
            "logs": status.logs,
            "metrics": status.metrics,
            "error": status.error,
            "error_type": status.error_type,
        }
    raise TypeError(f"not a fal_client status: {status!r}")


def error_json(error):
    return {
        "class": type(error).__name__,
        "status_code": error.status_code,
        "message": error.message,
        "error_type": error.error_type,
        "request_id": error.response_headers.get("x-fal-request-id"),
    }


def subscribe(args):
    """fal_client.subscribe: submit, poll the status until completed, fetch the result."""
    ids, updates = [], []

    def on_enqueue(request_id):
        ids.append(request_id)
        emit("enqueued", request_id=request_id)

    started = time.monotonic()
    outcome = {}
    try:
        outcome["result"] = fal_client.subscribe(
            args["endpoint"],
            arguments=args["arguments"],
            with_logs=True,
            on_enqueue=on_enqueue,
            on_queue_update=lambda status: updates.append(status_json(status)),
        )
    except fal_client.FalClientHTTPError as error:
        outcome["error"] = error_json(error)
    emit(
        "done",
        request_id=ids[0] if ids else None,
        updates=updates,
        seconds=time.monotonic() - started,
        **outcome,
    )


def run(args):
    """fal_client.run: one call to the direct listener."""
    outcome = {}
    try:
        outcome["result"] = fal_client.run(args["endpoint"], arguments=args["arguments"])
    except fal_client.FalClientHTTPError as error:
        outcome["error"] = error_json(error)
    emit("done", **outcome)


def lifecycle(args):
    """submit, then status at each step the test sets up, then result."""
    endpoint = args["endpoint"]
    handle = fal_client.submit(endpoint, arguments=args["arguments"])
    emit(
        "submitted",
        request_id=handle.request_id,
        urls=[handle.response_url, handle.status_url, handle.cancel_url],
        status=status_json(handle.status()),
    )
    step()
    # The module's own calls, which build the URLs from FAL_QUEUE_RUN_HOST and the id.
    running = fal_client.status(endpoint, handle.request_id, with_logs=True)
    emit("running", status=status_json(running))
    step()
    completed = handle.status(with_logs=True)
    result = fal_client.result(endpoint, handle.request_id)
    emit("done", status=status_json(completed), result=result)


def cancel(args):
    """submit, cancel while queued, then what status, result and a second cancel say."""
    endpoint = args["endpoint"]
    handle = fal_client.submit(endpoint, arguments=args["arguments"])
    queued = status_json(handle.status())
    fal_client.cancel(endpoint, handle.request_id)
    after = status_json(fal_client.status(endpoint, handle.request_id))
    outcome = {}
    try:
        outcome["result"] = fal_client.result(endpoint, handle.request_id)
    except fal_client.FalClientHTTPError as error:
        outcome["result_error"] = error_json(error)
    try:
        handle.cancel()
        outcome["cancelled_again"] = True
    except fal_client.FalClientHTTPError as error:
        outcome["cancel_again_error"] = error_json(error)
    emit(
        "done",
        request_id=handle.request_id,
        queued=queued,
        after=after,
        **outcome,
    )


def webhook(args):
    """submit with a webhook_url (fal's `fal_webhook`), then wait for the result."""
    handle = fal_client.submit(
        args["endpoint"], arguments=args["arguments"], webhook_url=args["url"]
    )
    emit("submitted", request_id=handle.request_id)
    emit("done", request_id=handle.request_id, result=handle.get())


CASES = {
    "webhook": webhook,
    "subscribe": subscribe,
    "run": run,
    "lifecycle": lifecycle,
    "cancel": cancel,
}


def main():
    case, args = sys.argv[1], json.loads(sys.argv[2])
    emit(
        "ready",
        version=fal_client.__version__,
        queue_url=fal_client_module.QUEUE_URL_FORMAT,
        run_url=fal_client_module.RUN_URL_FORMAT,
    )
    CASES[case](args)


if __name__ == "__main__":
    main()
