"""A/B gateway in front of TorchServe: sticky splits, fallbacks, keys, exposure log, report.

See docs/gateway.md.
"""
