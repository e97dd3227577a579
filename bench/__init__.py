"""The benchmark harness: taskq and its peers on the same Postgres, same workloads.

Run it with ``taskq bench [--quick] [--database-url URL] [--json FILE]``. This
package is bench-only: ``app/`` and ``worker/`` never import it.
"""
