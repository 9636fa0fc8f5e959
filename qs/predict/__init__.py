"""Prediction: the LDDMM initial momentum from the trained networks, geodesic shooting, correction, MC dropout.

Modules, bottom up (tensors everywhere but in :mod:`.files`):

* :mod:`.window`       -- the network over the whole grid: sliding window over the foreground patches,
  overlaps averaged, mirror ensemble (:func:`.window.predict_momentum`)
* :mod:`.mc_dropout`   -- reproducible MC-dropout samples of the momentum, the uncertainty's accumulator
* :mod:`.correction`   -- the correction network's data flow: warp-back, correction rounds, training data
* :mod:`.registration` -- one pair's predicted registration (:func:`.registration.predict_registration`)
* :mod:`.files`        -- the file runners of ``qs predict`` and ``qs correction-patches``

The command line (argument parsing only) is :mod:`qs.cli.predict`.
"""
