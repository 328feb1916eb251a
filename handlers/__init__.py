"""The TorchServe handler of the recommender: request validation (pure Python), the batch
recommendation engine and the BaseHandler subclass that ties them to TorchServe."""
