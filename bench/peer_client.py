"""Entry point of an isolated peer's client: ``python -m bench.peer_client MODULE:CLASS URL``.

Runs in the peer's own venv (``bench.isolated``). With ``--install`` it creates
the peer's schema in URL and exits. Otherwise it opens the peer's client and
serves the harness's workload calls, one JSON line in and one out on
stdin/stdout: ``open``, ``single``, ``batch``, ``paced``, ``close``. The
peer's own output goes to stderr so it never mixes with the replies.
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback
from contextlib import ExitStack


def load_system(spec: str):
    """An instance of the ``module:Class`` system."""
    module_name, class_name = spec.split(":")
    return getattr(importlib.import_module(module_name), class_name)()


def serve(system, url: str, replies) -> None:
    """Answer workload calls from stdin until ``close`` (or end of input)."""
    with ExitStack() as stack:
        client = None
        for line in sys.stdin:
            call = json.loads(line)
            op = call["op"]
            try:
                reply: dict = {}
                if op == "open":
                    client = stack.enter_context(system.local_client(url))
                elif op == "single":
                    client.enqueue_single(call["keys"])
                elif op == "batch":
                    client.enqueue_batch(call["keys"], call["batch"])
                elif op == "paced":
                    reply["committed"] = client.enqueue_paced(call["keys"], call["gap"])
                elif op != "close":
                    raise ValueError(f"unknown op {op!r}")
            except Exception as exc:
                traceback.print_exc()
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            replies.write(json.dumps(reply) + "\n")
            replies.flush()
            if op == "close":
                break


if __name__ == "__main__":
    spec, url = sys.argv[1:3]
    system = load_system(spec)
    if "--install" in sys.argv[3:]:
        system.local_install(url)
    else:
        replies, sys.stdout = sys.stdout, sys.stderr
        serve(system, url, replies)
