"""Real-time personalization: the recent-event store the gateway reads on every request, the one
history merge rule, and the offline replay that measures what recent events are worth.

Data flow: ``POST /v1/events`` (gateway) -> :mod:`realtime.store` (Redis in production, an
in-process store by default) -> the next ``/v1/recommendations`` of that user, whose history the
gateway extends with :func:`realtime.merge.merge_history` before TorchServe sees it.
docs/realtime.md has the whole picture.
"""
