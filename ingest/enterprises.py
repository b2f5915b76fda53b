"""The enterprise registry: who each enterprise is and what each target needs for it,
loaded from a file by ``nhjc enterprises load`` (docs/enterprises.md).

A file is a JSON array of entries, checked whole before anything is stored: one bad
entry and nothing is loaded.  Each entry holds the credit code, the name, the
county-level region sent at registration, the profile the platforms' configuration
call carries in its ``enterprise`` object (by the field names the platforms use), and
per target the overrides and credentials that target needs (a Yunnan PIN and secret).

Credentials are :class:`~pydantic.SecretStr` from the moment they are parsed: no
error text, repr or log line holds them, they are stored in a column of their own
(``enterprises.secrets``) and the history records only which of them changed.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

import asyncpg
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
)

from ingest.credit_code import checked
from ingest.frames import describe
from ingest.items import storable
from ingest.registryfile import RegistryFileError, check_entries, read_text

__all__ = [
    "PROFILE_FIELDS", "SECRET_FIELDS", "EnterpriseSpec", "EnterprisesError", "Profile", "TargetEntry",
    "parse_enterprises_file", "parse_enterprises_file_bytes", "upsert_enterprises",
]

_COUNTY = re.compile(r"^[1-8]\d{3}\d{2}$")


class EnterprisesError(RegistryFileError):
    """A whole enterprises file is unusable (see RegistryFileError); the text never holds
    a secret."""


def _county(v: str) -> str:
    # County-level codes never end in 00: those are a prefecture's or a province's.
    if not _COUNTY.match(v) or v.endswith("00"):
        raise ValueError("not a county-level region code (6 digits, not ending in 00, e.g. 340207)")
    return v


def _date(v: str | None) -> str | None:
    if v is not None:
        try:
            dt.date.fromisoformat(v)
        except ValueError:
            raise ValueError("not a date YYYY-MM-DD") from None
        if len(v) != 10:
            raise ValueError("not a date YYYY-MM-DD")
    return v


_Short = Annotated[str, StringConstraints(max_length=100)]
_Long = Annotated[str, StringConstraints(max_length=500)]
_Phone = Annotated[str, StringConstraints(max_length=40)]


class Profile(BaseModel):
    """The enterprise's profile, by the names the configuration call's ``enterprise``
    object uses.  All optional: which ones a platform insists on is not published, and
    public clients send most of them empty.  The credit code, name and region are not
    here: they are the entry's own fields, and the uplink fills ``code``,
    ``corporationCode``, ``name`` and ``regionCode`` from them."""

    # strict: a number must be a JSON number, a flag a JSON boolean; forbid: a misspelt
    # field is an error naming it, not a silent omission from what the platform receives.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    typeCode: _Short | None = None              # unit category code (单位类别编码)
    typeName: _Short | None = None              # unit category (e.g. 国有企业)
    industryCode: str | None = Field(default=None, pattern=r"^[A-T](\d{2,4})?$")  # GB/T 4754 industry, e.g. C3011
    regionName: _Short | None = None            # the region's name
    center: bool | None = None                  # a central state-owned enterprise (央企)
    jgzh: bool | None = None                    # an energy processing and conversion enterprise
    energyConsumeLevel: int | None = Field(default=None, ge=1, le=6)  # yearly consumption class 1-6
    latitude: float | None = Field(default=None, ge=-90, le=90)       # main site's centre, degrees
    longitude: float | None = Field(default=None, ge=-180, le=180)
    phone: _Phone | None = None
    fax: _Phone | None = None
    email: str | None = Field(default=None, max_length=100, pattern=r"^[^@\s]+@[^@\s]+$")
    address: _Long | None = None
    zipCode: str | None = Field(default=None, pattern=r"^\d{6}$")
    url: _Long | None = None
    fieldCode: str | None = Field(default=None, pattern=r"^\d{3}$")  # sector: 100 industry … 600 other
    fieldName: _Short | None = None
    corporationName: _Short | None = None       # legal representative (法人代表)
    registerDate: str | None = None             # date of registration, YYYY-MM-DD
    registerPrincipal: _Short | None = None     # registered capital, as written
    energyOffice: _Short | None = None          # the energy management office
    energyOfficial: _Short | None = None        # the manager in charge of energy saving
    energyOfficialPosition: _Short | None = None
    energyOfficialPhone: _Phone | None = None
    energyPass: bool | None = None              # energy management system certified
    passDate: str | None = None                 # its certification date, YYYY-MM-DD
    passOrg: _Short | None = None               # its certification body
    energyRespName: _Short | None = None        # the energy manager (能管负责人)
    energyRespPhone: _Phone | None = None
    productionLine: _Long | None = None         # main production lines
    leadingProduct: _Long | None = None         # leading products
    remark: _Long | None = None
    groupName: _Short | None = None             # the group the enterprise belongs to
    groupAddress: _Long | None = None
    groupRemark: _Long | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _text(cls, v: object) -> object:
        return storable(v)

    @field_validator("registerDate", "passDate")
    @classmethod
    def _dates(cls, v: str | None) -> str | None:
        return _date(v)


PROFILE_FIELDS = tuple(Profile.model_fields)
SECRET_FIELDS = ("pin", "secret")


class TargetEntry(BaseModel):
    """What one target needs for this enterprise beyond the target's settings."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    region: str | None = None   # the region this platform knows the enterprise by
    pin: SecretStr | None = None     # Yunnan: the enterprise's PIN, 4 to 12 digits
    secret: SecretStr | None = None  # Yunnan: the platform-issued secret (its first 16 characters are the key)

    @field_validator("*", mode="before")
    @classmethod
    def _text(cls, v: object) -> object:
        return storable(v)

    @field_validator("region")
    @classmethod
    def _region(cls, v: str | None) -> str | None:
        return None if v is None else _county(v)

    @field_validator("pin")
    @classmethod
    def _pin(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not re.fullmatch(r"[0-9]{4,12}", v.get_secret_value()):
            raise ValueError("a PIN is 4 to 12 decimal digits")
        return v

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            s = v.get_secret_value()
            if len(s) < 16 or not s.isascii() or not s.isprintable():
                raise ValueError("a secret is at least 16 printable ASCII characters")
        return v

    def overrides(self) -> dict[str, object]:
        """The settings that are not secret."""
        return {} if self.region is None else {"region": self.region}

    def secrets(self) -> dict[str, str]:
        """The credentials given, in clear: for storing only, never for printing."""
        return {name: v.get_secret_value() for name in SECRET_FIELDS
                if (v := getattr(self, name)) is not None}


_TargetName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")]


class EnterpriseSpec(BaseModel):
    """One entry of an enterprises file."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    enterprise: str
    name: str = Field(min_length=1, max_length=200)
    region: str
    profile: Profile = Field(default_factory=Profile)
    targets: dict[_TargetName, TargetEntry] = Field(default_factory=dict)

    @field_validator("enterprise", "name", "region", mode="before")
    @classmethod
    def _text(cls, v: object) -> object:
        return storable(v)

    @field_validator("enterprise")
    @classmethod
    def _enterprise(cls, v: str) -> str:
        return checked(v)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("is blank")
        return v

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        return _county(v)

    def profile_record(self) -> dict[str, object]:
        """The profile fields given (absent ones left out)."""
        return self.profile.model_dump(exclude_none=True)

    def target_overrides(self) -> dict[str, dict[str, object]]:
        return {t: e.overrides() for t, e in self.targets.items() if e.overrides()}

    def target_secrets(self) -> dict[str, dict[str, str]]:
        return {t: s for t, e in self.targets.items() if (s := e.secrets())}

    def __repr__(self) -> str:  # the default one is safe too (SecretStr), but short is kinder in logs
        return f"EnterpriseSpec({self.enterprise!r}, {self.name!r}, region={self.region!r})"


# ---- parsing ----------------------------------------------------------------------------

_FIELDS_AT: dict[str, tuple[str, ...]] = {
    "entry": tuple(EnterpriseSpec.model_fields),
    "profile": PROFILE_FIELDS,
    "target": tuple(TargetEntry.model_fields),
}


def _fields_for(loc: tuple[int | str, ...]) -> tuple[str, tuple[str, ...]]:
    """Where an unknown field sits, and the field names allowed there."""
    if loc[:1] == ("profile",):
        return " in profile", _FIELDS_AT["profile"]
    if loc[:1] == ("targets",) and len(loc) >= 2:
        return f" in targets.{loc[1]}", _FIELDS_AT["target"]
    return "", _FIELDS_AT["entry"]


def _unknown(loc: tuple[int | str, ...]) -> str:
    where, allowed = _fields_for(loc[:-1])
    name = str(loc[-1])
    close = difflib.get_close_matches(name, allowed, n=1) if len(name) < 64 else []
    if not close and where == "" and name in PROFILE_FIELDS:
        return f"{describe(name)} (a profile field: put it inside \"profile\")"
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{describe(name)}{where}{hint}"


def _entry_name(obj: Mapping[str, Any]) -> str:
    code = obj.get("enterprise")
    return f" ({describe(code, 20)})" if isinstance(code, str) else ""


def _cross_checks(specs: list[EnterpriseSpec]) -> list[str]:
    """The same enterprise twice in one file."""
    seen: dict[str, int] = {}
    bad = []
    for i, spec in enumerate(specs):
        if spec.enterprise in seen:
            bad.append(f"entry [{i}] ({spec.enterprise}): the same enterprise as entry [{seen[spec.enterprise]}]")
        seen.setdefault(spec.enterprise, i)
    return bad


def parse_enterprises_file(text: str) -> list[EnterpriseSpec]:
    """A JSON array of enterprise entries; any fault raises EnterprisesError naming the
    first bad entry (by index and credit code) and counting the others."""
    return check_entries(text, EnterpriseSpec, what="an entry", plural="enterprises", error=EnterprisesError,
                         name_of=_entry_name, unknown=_unknown, cross_checks=_cross_checks)


def parse_enterprises_file_bytes(data: bytes, encoding: str | None = None) -> list[EnterpriseSpec]:
    """:func:`parse_enterprises_file` for the file's bytes (ingest.registryfile.read_text)."""
    return parse_enterprises_file(read_text(data, encoding, EnterprisesError))


# ---- storing ----------------------------------------------------------------------------

_CURRENT = "SELECT name, region, profile, targets, secrets FROM enterprises WHERE enterprise = $1 FOR UPDATE"

_UPSERT = """
INSERT INTO enterprises (enterprise, name, region, profile, targets, secrets, source, updated_at)
VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6::jsonb, $7, now())
ON CONFLICT (enterprise) DO UPDATE SET
    name = EXCLUDED.name, region = EXCLUDED.region, profile = EXCLUDED.profile,
    targets = EXCLUDED.targets, secrets = EXCLUDED.secrets, source = EXCLUDED.source, updated_at = now()
"""

_HISTORY = "INSERT INTO enterprises_history (enterprise, source, record) VALUES ($1, $2, $3::jsonb)"


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _decoded(value: object) -> Any:
    # A plain connection returns jsonb as text; a pool with a codec, as Python values.
    return json.loads(value) if isinstance(value, str) else value


def _secrets_changed(old: Mapping[str, Mapping[str, str]], new: Mapping[str, Mapping[str, str]]) -> list[str]:
    names = {(t, k) for src in (old, new) for t, kv in src.items() for k in kv}
    return sorted(f"{t}.{k}" for t, k in names if old.get(t, {}).get(k) != new.get(t, {}).get(k))


async def upsert_enterprises(conn: asyncpg.Connection, specs: Iterable[EnterpriseSpec], source: str) -> int:
    """Store the entries in one transaction, each replacing what the registry held for
    its enterprise; an unchanged entry is left alone.  Every change adds a history row
    (without the secrets).  Returns how many enterprises were added or changed."""
    changed = 0
    async with conn.transaction():
        for spec in specs:
            profile, overrides, secrets = spec.profile_record(), spec.target_overrides(), spec.target_secrets()
            old = await conn.fetchrow(_CURRENT, spec.enterprise)
            old_secrets: dict[str, dict[str, str]] = {} if old is None else _decoded(old["secrets"])
            if old is not None and (old["name"], old["region"], _decoded(old["profile"]),
                                    _decoded(old["targets"]), old_secrets) == (
                                        spec.name, spec.region, profile, overrides, secrets):
                continue
            await conn.execute(_UPSERT, spec.enterprise, spec.name, spec.region, _json(profile),
                               _json(overrides), _json(secrets), source)
            record = {
                "name": spec.name, "region": spec.region, "profile": profile, "targets": overrides,
                "secrets": sorted(f"{t}.{k}" for t, kv in secrets.items() for k in kv),
                "secrets_changed": _secrets_changed(old_secrets, secrets),
            }
            await conn.execute(_HISTORY, spec.enterprise, source, _json(record))
            changed += 1
    return changed
