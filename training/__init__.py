"""Training of the three KinD stages and the bundle they produce (imports :mod:`model`, never the service).

By topic: ``config`` (typed config from YAML), ``data``/``noise``/``dark`` (pairs and their degradation),
``losses`` (the paper's losses), ``stages`` (what each stage trains and its loss), ``loop`` (the one loop),
``runs`` (the run folder), ``checkpoint`` (atomic resumable state), ``dist`` (torchrun), ``evaluate``
(metrics), ``export`` (run → bundle); ``cli`` is ``kind train``, ``kind eval`` and ``kind export``.
"""
