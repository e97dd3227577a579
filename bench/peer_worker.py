"""Entry point of a peer worker process: ``python -m bench.peer_worker MODULE URL RECORD``.

``MODULE`` (``bench.peers_pgqueuer``, say) provides ``serve(url, started, stop)`` and,
optionally, ``loop_factory()`` (the event loop the peer runs fastest on).
Peers are imported here rather than run as ``__main__`` so that their apps and
tasks live in importable modules, as their docs ask.
"""

from __future__ import annotations

import importlib
import sys

from bench.system import serve_worker

if __name__ == "__main__":
    module_name, url, record = sys.argv[1:4]
    module = importlib.import_module(module_name)
    loop_factory = getattr(module, "loop_factory", None)
    serve_worker(record, lambda started, stop: module.serve(url, started, stop), loop_factory)
