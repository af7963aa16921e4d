"""KinD Serve: the HTTP service (FastAPI under uvicorn) around :mod:`kind_serve.model`.

By topic: ``config`` (Settings, the operator's knobs, and Limits, the protocol's), ``app`` (factory and
lifespan), ``routes/`` (one router per resource; ``params`` what the image routes share, ``pages`` the demo
and docs pages), ``deps`` (request dependencies: the app's engine, the client's store, body reading,
admission), ``auth`` (bearer tokens, checked once), ``admission`` (limits and shares, the upload gate),
``problems`` (the error record every refusal is, a leaf) and ``errors`` (rendering them as problem+json),
``payloads`` (bytes in and out), ``inference`` (a request's model work as batcher items), ``partcache`` (parts
kept for re-lighting), ``batcher`` with ``tickets`` (queue, deadlines, failure isolation), ``worker`` (one per
device), ``jobs``/``workload`` (long work on a leased queue, and its estimates), ``store`` (images, results and
the job queue), ``imaging``/``decoding``/``prescan`` (contained decoding), ``metrics``, ``logs`` (formats,
request ids, the access log); ``__main__`` is ``kind serve`` and its bounded HTTP/1.1 protocol.
"""
