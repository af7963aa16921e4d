"""KinD Serve: the HTTP service (FastAPI under uvicorn) around :mod:`model`.

By topic: ``config`` (Settings, the only knobs), ``app`` (factory and lifespan), ``routes/`` (one router per
resource; ``params`` parses the shared query values), ``payloads`` (bytes in and out), ``inference`` (a
request's model work as batcher items), ``batcher`` with ``tickets`` and ``batches`` (admission, queue,
deadlines, failure isolation), ``worker`` (one per device), ``jobs``/``workload`` (long work and its
estimates), ``admission``/``middleware``/``deps``/``errors`` (limits, auth, problem+json), ``store``,
``imaging``/``prescan`` (safe decoding), ``metrics``, ``logs``; ``__main__`` is ``kind serve``.
"""
