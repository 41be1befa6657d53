"""``gateway serve --workers N``: N worker processes on one port under a supervisor that
restarts them, forwards shutdown, keeps their routes in step and sums their metrics.

It stands above the rest of the gateway (a worker is a whole gateway); nothing imports it but
the command line.
"""

from gateway.workers.supervisor import supervise, usable_cores, worker_count
from gateway.workers.worker import gather_spools

__all__ = ["gather_spools", "supervise", "usable_cores", "worker_count"]
