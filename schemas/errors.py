"""The exception root of agent-finops and the errors of the contract layer.

Every error the project raises derives from :class:`FinopsError`, so an entry point can catch one type, print the
message (which names the field, file or schema and what to do) and exit non-zero. Library errors (fastavro,
pydantic, confluent-kafka) are translated into these at the boundary with ``raise ... from err``.

None of these derive from ``ValueError`` on purpose: pydantic turns a ``ValueError`` raised inside a validator into
its own ``ValidationError``; ours must propagate unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "DecodeError",
    "EncodeError",
    "FieldProblem",
    "FinopsError",
    "UnknownSchemaError",
    "ValidationFailed",
]


class FinopsError(Exception):
    """Root of every error agent-finops raises on purpose."""


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One broken rule on one field.

    ``field`` is the dotted field path (``tags``, ``thresholds.0.percent``); ``rule`` is a short stable identifier
    (``non_negative``, ``cache_within_input``, ...) that code and dashboards may match on; ``message`` is for people
    and says what was found and why it is refused.
    """

    field: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.field} [{self.rule}]: {self.message}"


class ValidationFailed(FinopsError):
    """A record broke one or more rules; ``problems`` lists all of them, not just the first."""

    def __init__(self, problems: Iterable[FieldProblem], record: str = "record") -> None:
        self.problems: list[FieldProblem] = list(problems)
        self.record = record
        super().__init__(self._render())

    def _render(self) -> str:
        count = len(self.problems)
        lines = [f"{self.record} is invalid ({count} problem{'s' if count != 1 else ''}):"]
        lines.extend(f"  - {problem}" for problem in self.problems)
        return "\n".join(lines)

    def fields(self) -> list[str]:
        """The field names of all problems, in the order found (handy for tests and DLQ reasons)."""
        return [problem.field for problem in self.problems]


class UnknownSchemaError(FinopsError):
    """Bytes name a writer schema we do not know (single-object fingerprint or Schema Registry id), or a schema name
    is not one of ours. The message names the fingerprint (hex), the id or the name."""


class DecodeError(FinopsError):
    """Bytes could not be decoded: wrong magic, truncated header or body, trailing bytes, or a body that does not
    match its writer schema. The message says which."""


class EncodeError(FinopsError):
    """A record could not be encoded with its schema (missing field, wrong type, value out of range)."""


class ConfigError(FinopsError):
    """Configuration is missing or wrong; the message names the setting or file and what to change."""
