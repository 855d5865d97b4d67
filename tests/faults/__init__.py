"""The fault suite (marker ``faults``): the real roles end to end under injected faults, reconciled against the
input. Run with ``pytest -m faults tests/faults``; each test prints and records ``injected: ... / reconciled: ...``."""
