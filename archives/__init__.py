"""TorchServe packaging and local serving: versioned .mar archives of the recommender
(:mod:`archives.build`), a local TorchServe (:mod:`archives.server`), its HTTP APIs with token
authorization (:mod:`archives.client`) and the ``python -m archives`` commands."""
