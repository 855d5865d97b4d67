"""agent-finops application shell: the `finops` command, settings, topic declarations, the local stack."""

__version__ = "0.1.0"
