"""KinD Serve: the HTTP service (FastAPI under uvicorn) around :mod:`kind_serve.model`.

By topic: ``config`` (Settings, the operator's knobs, and Limits, the protocol's), ``app`` (factory and
lifespan), ``routes/`` (one router per resource; ``params`` parses the shared query values), ``deps``
(request dependencies: the app's engine, the client's store, body reading, admission), ``auth`` (bearer
tokens, checked once), ``payloads`` (bytes in and out), ``inference`` (a request's model work as batcher
items), ``partcache`` (parts kept for re-lighting), ``batcher`` with ``tickets`` and ``batches`` (admission,
queue, deadlines, failure isolation), ``worker`` (one per device), ``jobs``/``workload`` (long work on a
leased queue, and its estimates), ``admission``/``middleware``/``httpserver``/``errors`` (limits, shares,
problem+json), ``store`` (images, results and the job queue), ``imaging``/``decoding``/``prescan`` (contained
decoding), ``metrics``, ``logs``; ``__main__`` is ``kind serve``.
"""
