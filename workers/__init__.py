"""Processes that run beside the relay instances (one module per worker).

None yet: the janitor and the consumer-group runner come with the work-queue issue.
"""
