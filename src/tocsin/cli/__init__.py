"""The command line: `tocsin run`, `check-config`, `db`, `tickets`, `subjects`, `ping-url`,
`maintenance`, `webhooks`, `users` and `demo`, one module each.

Exit status: 0 success, 2 bad usage or invalid input (config, ticket number, transition),
1 any other failure. Signals are handled in `tocsin.cli.daemon` and only there.
"""

from tocsin.cli import (  # noqa: F401  (they register)
    daemon,
    demo,
    maintenance,
    monitor,
    tickets,
    users,
    webhooks,
)
from tocsin.cli.base import main

__all__ = ["main"]
