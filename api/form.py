"""Plain (non-JSON) multipart form fields, checked as strictly as the OpenAPI document says."""

from __future__ import annotations

from layerq.errors import ValidationFailed

TRUE = ("true", "1", "yes")
FALSE = ("false", "0", "no")
# The same spellings, case-insensitive, as a JSON Schema pattern (ECMA regexes have no (?i)).
FLAG_PATTERN = r"^(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|1|0|[Yy][Ee][Ss]|[Nn][Oo])$"


def form_flag(raw: str | None, field: str, *, default: bool) -> bool:
    if raw is None:
        return default
    value = raw.lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ValidationFailed(f"{field} must be true or false", field=field)


RETAIN_PATTERN = r"^[1-9][0-9]{0,7}$"


def form_seconds(raw: str | None, field: str) -> int | None:
    """A positive whole number of seconds (`retain_s`), or None when the field is absent."""
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or raw.startswith("0") or len(raw) > 8:
        raise ValidationFailed(f"{field} must be a positive whole number of seconds", field=field)
    return int(raw)
