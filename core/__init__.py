"""The served core: everything a ``.mar`` ships besides TorchServe's adapter.

The request schema and validation, the history encoder, the engine that scores, the artifact
and id-table formats, retrieval indexes and quantization. Training, the handler, the gateway
and the benchmarks import these modules, so the numbers measured offline come from the code
TorchServe runs. Nothing here imports a stage package: ``core`` sits below all of them.
"""
