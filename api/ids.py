"""Job and batch ids as the API accepts them; the OpenAPI document publishes the same pattern."""

from __future__ import annotations

import re

from layerq.errors import ValidationFailed

# Ids are uuid4 hex; any ASCII letters and digits up to 64 are accepted so that ids of other
# generators (tests, migrations) still read back. `str.isalnum()` would also pass non-ASCII letters.
ID_PATTERN = r"^[A-Za-z0-9]{1,64}$"
_ID = re.compile(r"[A-Za-z0-9]{1,64}")


def check_id(value: str, field: str, what: str = "job") -> str:
    if not _ID.fullmatch(value):
        raise ValidationFailed(f"malformed {what} id (1 to 64 ASCII letters and digits)", field=field)
    return value
