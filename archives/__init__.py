"""TorchServe packaging and local serving: versioned .mar archives of the recommender
(:mod:`archives.build`) in a model store (:mod:`archives.store`), a local TorchServe
(:mod:`archives.server`, its config from :mod:`archives.properties`), its HTTP APIs with token
authorization (:mod:`archives.client`) and the ``python -m archives`` commands."""
