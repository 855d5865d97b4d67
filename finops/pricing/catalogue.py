"""The price catalogue the workers use: the bundled genai-prices data, or a newer snapshot installed without a release.

Role: ``finops prices update --from FILE|URL`` (DESIGN §4) checks that genai-prices can load a data file and
installs it in the catalogue directory (``FINOPS_STREAM_CATALOGUE_DIR``) as ``catalogue-<sha256>.json`` plus
``current.json`` naming the active snapshot (:func:`install_catalogue`); :class:`CatalogueWatcher` lets the hot path
pick up a new one between batches; ``finops prices status`` warns when the catalogue's date is too old.

Guarantee: nothing is fetched at run time unless the user asks; every priced event carries its
``catalogue_version`` (``genai-prices-data.<sha256, 12 hex>`` for an installed snapshot), and per partition the
version changes at one offset. See the README, "Pricing".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import genai_prices
from genai_prices import data_snapshot
from genai_prices import types as gp_types

from finops.clock import utc_now
from finops.pricing.engine import Pricer, catalogue_version, parse_cost_basis
from finops.pricing.pricebook import PriceBook, load_price_book
from schemas.errors import ConfigError, FinopsError

__all__ = [
    "CatalogueError",
    "CatalogueInfo",
    "CatalogueWatcher",
    "build_pricer",
    "catalogue_dir",
    "install_catalogue",
    "load_active_catalogue",
    "read_catalogue_source",
]

log = logging.getLogger(__name__)

_CURRENT = "current.json"
_MAX_BYTES = 64 * 1024 * 1024


class CatalogueError(FinopsError):
    """A catalogue snapshot cannot be read, loaded by genai-prices, or installed."""


@dataclass(frozen=True)
class CatalogueInfo:
    """What ``current.json`` says about the active snapshot (or the bundled data when none is installed)."""

    version: str
    source: str
    installed_at: datetime | None
    data_date: date | None
    path: Path | None
    providers: int
    models: int

    def as_json(self) -> dict[str, Any]:
        return {
            "version": self.version, "source": self.source,
            "installed_at": self.installed_at.isoformat() if self.installed_at else None,
            "data_date": self.data_date.isoformat() if self.data_date else None,
            "path": str(self.path) if self.path else None, "providers": self.providers, "models": self.models,
        }  # fmt: skip


def catalogue_dir(stream_settings: Any, data_dir: Path) -> Path:
    """``FINOPS_STREAM_CATALOGUE_DIR`` or ``<data dir>/prices``."""
    configured = getattr(stream_settings, "catalogue_dir", None)
    return Path(configured) if configured else Path(data_dir) / "prices"


def read_catalogue_source(source: str, *, timeout: float = 30.0) -> bytes:
    """The bytes of ``source``: an ``http(s)://`` URL (one GET, only because the user asked) or a file path.

    Raises :class:`CatalogueError` naming the source and what to do."""
    if source.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(source, timeout=timeout) as response:
                data: bytes = response.read(_MAX_BYTES + 1)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise CatalogueError(f"cannot fetch the price catalogue from {source}: {err}; check the URL") from err
    else:
        path = Path(source)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise CatalogueError(f"cannot read the price catalogue {path}: {err.strerror or err}") from err
    if len(data) > _MAX_BYTES:
        raise CatalogueError(f"the price catalogue from {source} is larger than {_MAX_BYTES // 2**20} MiB")
    return data


def _providers(data: bytes, source: str) -> list[gp_types.Provider]:
    try:
        raw = json.loads(data)
    except ValueError as err:
        raise CatalogueError(f"{source} is not JSON ({err}); pass a genai-prices data file (data.json)") from err
    if not isinstance(raw, list) or not raw:
        raise CatalogueError(f"{source} must be the genai-prices provider array (a non-empty JSON list)")
    try:
        # The loader genai-prices uses for its own auto-update (private; pinned by genai-prices>=0.2.3,<0.3).
        return gp_types._providers_from_raw(raw)
    except Exception as err:
        raise CatalogueError(f"genai-prices {genai_prices.__version__} cannot load {source}: {err}") from err


def _data_date(providers: list[gp_types.Provider], not_after: date) -> date | None:
    """The newest price-change date in the data that is not after ``not_after`` (a catalogue also lists changes
    announced for later dates; those do not make it recent). Data without one is dated by its install time, and
    ``finops prices status`` warns when the date is older than ``FINOPS_STREAM_CATALOGUE_MAX_AGE_DAYS``."""
    newest: date | None = None
    for provider in providers:
        for model in provider.models:
            if isinstance(model.prices, gp_types.ModelPrice):
                continue
            for conditional in model.prices:
                constraint = conditional.constraint
                if (
                    isinstance(constraint, gp_types.StartDateConstraint)
                    and constraint.start_date <= not_after
                    and (newest is None or constraint.start_date > newest)
                ):
                    newest = constraint.start_date
    return newest


def install_catalogue(source: str, directory: Path, *, now: datetime) -> CatalogueInfo:
    """Read ``source``, check that genai-prices loads it, install it in ``directory`` and make it current.

    ``source`` is a genai-prices data file (the JSON array of providers genai-prices fetches for its auto-update,
    ``prices/data.json`` of its repository). The default directory is ``<data dir>/prices``. The bundled data keeps
    ``finops.pricing.engine.catalogue_version`` (package version + hash of its data module) as its version; each
    version is recorded with its source in ``price_catalogue_versions``.

    Writes ``catalogue-<sha>.json`` then replaces ``current.json`` atomically (a worker reads either the old or the
    new pointer, never half of one). Raises :class:`CatalogueError`."""
    data = read_catalogue_source(source)
    providers = _providers(data, source)
    if not source.startswith(("http://", "https://")):
        source = str(Path(source).resolve())
    digest = hashlib.sha256(data).hexdigest()
    version = f"genai-prices-data.{digest[:12]}"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"catalogue-{digest[:12]}.json"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    data_date = _data_date(providers, now.astimezone(UTC).date())
    pointer = {
        "version": version, "source": _redact(source) if source.startswith(("http://", "https://")) else source,
        "installed_at": now.astimezone(UTC).isoformat(), "data_date": data_date.isoformat() if data_date else None,
        "path": path.name, "sha256": digest, "providers": len(providers),
        "models": sum(len(p.models) for p in providers),
    }  # fmt: skip
    tmp = directory / (_CURRENT + ".tmp")
    tmp.write_text(json.dumps(pointer, indent=2) + "\n")
    os.replace(tmp, directory / _CURRENT)
    return _info(pointer, directory)


def _redact(url: str) -> str:
    """A URL without user info or query (a token in a query string is a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _info(pointer: dict[str, Any], directory: Path) -> CatalogueInfo:
    installed = pointer.get("installed_at")
    data_date = pointer.get("data_date")
    return CatalogueInfo(
        version=str(pointer["version"]), source=str(pointer.get("source", "")),
        installed_at=datetime.fromisoformat(installed) if installed else None,
        data_date=date.fromisoformat(data_date) if data_date else None,
        path=directory / str(pointer["path"]), providers=int(pointer.get("providers", 0)),
        models=int(pointer.get("models", 0)),
    )  # fmt: skip


def _read_pointer(directory: Path) -> dict[str, Any] | None:
    try:
        text = (directory / _CURRENT).read_text()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise CatalogueError(f"cannot read {directory / _CURRENT}: {err.strerror or err}") from err
    try:
        pointer = json.loads(text)
    except ValueError as err:
        raise CatalogueError(f"{directory / _CURRENT} is not JSON ({err}); run finops prices update again") from err
    if not isinstance(pointer, dict) or "version" not in pointer or "path" not in pointer:
        raise CatalogueError(f"{directory / _CURRENT} lacks version/path; run finops prices update again")
    return pointer


def bundled_info() -> CatalogueInfo:
    snapshot = data_snapshot.get_snapshot()
    return CatalogueInfo(
        version=catalogue_version(snapshot), source=f"bundled with genai-prices {genai_prices.__version__}",
        installed_at=None, data_date=_data_date(snapshot.providers, utc_now().date()), path=None,
        providers=len(snapshot.providers),
        models=sum(len(p.models) for p in snapshot.providers),
    )  # fmt: skip


def load_active_catalogue(directory: Path) -> tuple[CatalogueInfo, data_snapshot.DataSnapshot | None]:
    """The active catalogue: the installed snapshot ``current.json`` names, or the bundled data (snapshot None).

    Raises :class:`CatalogueError` when ``current.json`` names a file that is missing or does not load."""
    pointer = _read_pointer(directory)
    if pointer is None:
        return bundled_info(), None
    info = _info(pointer, directory)
    assert info.path is not None
    data = read_catalogue_source(str(info.path))
    snapshot = data_snapshot.DataSnapshot(_providers(data, str(info.path)), from_auto_update=False)
    return info, snapshot


def build_pricer(
    stream_settings: Any, data_dir: Path, *, price_book: PriceBook | None = None, book_path: Path | None = None
) -> Pricer:
    """The Pricer the settings describe: price book (``book_path`` or ``FINOPS_STREAM_PRICE_BOOK``), cost basis
    (``FINOPS_STREAM_COST_BASIS``) and the active catalogue. Raises ConfigError / PriceBookError / CatalogueError."""
    if price_book is None:
        path = book_path or stream_settings.price_book
        price_book = load_price_book(path) if path is not None else None
    try:
        basis = parse_cost_basis(stream_settings.cost_basis)
    except FinopsError as err:
        raise ConfigError(str(err)) from err
    info, snapshot = load_active_catalogue(catalogue_dir(stream_settings, data_dir))
    return Pricer(
        price_book, cost_basis=basis, snapshot=snapshot,
        catalogue_version_label=info.version if snapshot is not None else None,
    )  # fmt: skip


class CatalogueWatcher:
    """Tells the hot path when ``current.json`` names another catalogue, and builds the Pricer for it.

    ``poll(now)`` is cheap (one ``stat`` at most every ``interval_s``); it returns a new Pricer only when the active
    version changed and the new snapshot loaded; a snapshot that fails to load is logged and the old Pricer kept.

    The hot path polls it between batches (a safe point: no event is half priced), and every event from the next
    batch on is priced and stamped with the new Pricer, so per partition the version changes at one offset."""

    def __init__(self, directory: Path, make_pricer: Any, current_version: str, *, interval_s: float = 5.0) -> None:
        self.directory = directory
        self._make = make_pricer
        self.version = current_version
        self._interval = interval_s
        self._next = 0.0
        self._mtime: float | None = self._stat()

    def _stat(self) -> float | None:
        try:
            return (self.directory / _CURRENT).stat().st_mtime
        except OSError:
            return None

    def poll(self, now: float) -> Pricer | None:
        if now < self._next:
            return None
        self._next = now + self._interval
        mtime = self._stat()
        if mtime == self._mtime:
            return None
        self._mtime = mtime
        try:
            pricer: Pricer = self._make()
        except FinopsError as err:
            log.error("price catalogue in %s not reloaded, keeping %s: %s", self.directory, self.version, err)
            return None
        if pricer.catalogue_version == self.version:
            return None
        log.info("price catalogue reloaded: %s -> %s", self.version, pricer.catalogue_version)
        self.version = pricer.catalogue_version
        return pricer
