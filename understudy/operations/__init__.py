"""The operations table: every operation of the admin API and the CLI, declared once.

Each `Operation` (`base.py`) names its admin route, its parameters, whether it only reads, and
one function that performs it given a `Context` (settings, store, and the live proxy when it
runs inside one). From the one declaration:

- the proxy mounts every operation as an admin route (`proxy.admin.admin_router`), running it
  with its own state: changes on the recorder's writer thread, the site then reloaded in the
  router, reads after a recorder flush;
- the CLI runs an operation by name (`proxy_client.StoreAccess.run`): through the running
  proxy's admin API when the data dir's proxy.json names one, else on the store file itself
  (read-only for a read);
- a refusal is one `OperationError(status, message, code)`: the admin API answers it as an
  OpenAI-style error body, the CLI prints `error: MESSAGE` and exits 1, with the same message.

`training.py` and `base.py` import nothing of the proxy: the training worker's client
(`understudy.operations.client`) uses them. Subsystems load inside an operation, when it runs.
"""

from __future__ import annotations

from understudy.operations import reads, reviews, sites, training
from understudy.operations.base import Context, Operation, OperationError, Param, Text

OPERATIONS: dict[str, Operation] = {
    op.name: op for op in (*sites.OPERATIONS, *training.OPERATIONS, *reviews.OPERATIONS, *reads.OPERATIONS)
}

__all__ = ["OPERATIONS", "Context", "Operation", "OperationError", "Param", "Text"]
