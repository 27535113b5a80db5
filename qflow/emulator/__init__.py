"""The QPU service emulator: one physical QPU behind a REST API, for tests and laptops.

It stands in for a QPU the way the papers' "quantum partition" did: tasks wait in a FIFO
queue and the QPU executes ONE at a time. Each backend adds a latency (superconducting-like:
sub-second, neutral-atom-like: minutes), multiplied by ``time_scale``, then the task is
really solved (a QUBO by simulated annealing in a worker thread, so the server keeps
answering while the "QPU" works). The QPU time a task is accounted is latency + solve.

The API (JSON under ``/v1``, a bearer token on every request) is described in
docs/emulator.md. Run it with ``qflow emulator --token-file FILE`` or
``python -m qflow.emulator``; inside a running event loop with
``runner, url = await start_emulator(token)`` and ``await stop_emulator(runner)``.

A new task kind is one function registered with :func:`task_kind`: it validates the task
body and returns the solver the worker thread runs.

Modules: :mod:`~qflow.emulator.backends` (latency models), :mod:`~qflow.emulator.kinds`
(task kinds), :mod:`~qflow.emulator.faults` (fault injection), :mod:`~qflow.emulator.qpu`
(the one-QPU scheduler), :mod:`~qflow.emulator.http` (the API),
:mod:`~qflow.emulator.service` (``qflow emulator``), :mod:`~qflow.emulator.errors`.

Nothing is imported here: validating a deployment with an ``emulator`` location loads only
its backends (:mod:`~qflow.emulator.backends`), not the HTTP stack.
"""
