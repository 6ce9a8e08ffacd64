"""Adapters for training frameworks (optional extras).

Nothing is re-exported here: each adapter imports its framework, so it is imported from its own
module (``gradhealth.integrations.lightning``) by those who have that framework installed.
"""

__all__: list[str] = []
