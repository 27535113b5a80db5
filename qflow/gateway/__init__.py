"""The QPU gateway: virtual-QPU leases, per-step tokens, credentials kept on this side.

One gateway serves the quantum locations of a deployment. It is embedded in ``qflow run``
by default (placement calls it directly; steps reach it over HTTP on 127.0.0.1), or run
site-wide (``qflow gateway``) so several runs share one QPU.

* Orchestrators take a **lease** on a location: one of its ``vqpus`` slots, waited for at
  most ``max_wait`` seconds, refused at once when the QPU is unreachable, hangs or reports
  itself offline. A lease comes with a fresh step token.
* A step's client command (step token only, never the vendor key) submits tasks, reads their
  state and results through the gateway; the gateway forwards them to the location's quantum
  connector, which holds the vendor credentials, and journals each task before it exists.
* Releasing a lease frees its slot, revokes its token, stops its unfinished tasks by id and
  returns what its tasks used and how they ended.

Modules: :mod:`~qflow.gateway.leases` (records and slots), :mod:`~qflow.gateway.core`
(the gateway), :mod:`~qflow.gateway.http` (its API), :mod:`~qflow.gateway.client` (a
site-wide gateway, orchestrator side), :mod:`~qflow.gateway.service` (``qflow gateway``).


Nothing is imported here: a run without QPUs never loads the gateway's HTTP stack (aiohttp).
"""
