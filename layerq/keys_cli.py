"""`layerq keys create|revoke|list`: the operator's side of API keys (storage/apikeys.py).

Run wherever `LAYERQ_REDIS_URL` (and `LAYERQ_KEY_PREFIX`) reach the deployment's Redis: a key is
live for every API process the moment it is created, and dead the moment it is revoked."""

from __future__ import annotations

import argparse
import json
import sys

from layerq.config import Settings
from layerq.errors import ValidationFailed
from layerq.results import iso


def add_parser(sub: argparse._SubParsersAction) -> None:
    k = sub.add_parser("keys", help="issue, revoke and list API keys (LAYERQ_AUTH=keys)")
    ks = k.add_subparsers(dest="keys_command", required=True)
    c = ks.add_parser("create", help="issue a key for a tenant; the key is printed once")
    c.add_argument("--tenant", required=True)
    c.add_argument("--name", default="", help="a note for `keys list` (who or what holds it)")
    r = ks.add_parser("revoke", help="revoke a key by its id (the 12 hex characters after lq_)")
    r.add_argument("key_id")
    listing = ks.add_parser("list", help="every key issued: id, tenant, created, revoked")
    for parser in (c, r, listing):
        parser.add_argument("--json", action="store_true", help="print JSON")


def cmd_keys(args: argparse.Namespace) -> int:
    from storage.apikeys import ApiKeyStore

    settings = Settings.from_env()
    store = ApiKeyStore.from_url(settings.redis_url, key_prefix=settings.key_prefix)
    as_json = getattr(args, "json", False)
    if args.keys_command == "create":
        try:
            record, key = store.create(args.tenant, name=args.name)
        except ValidationFailed as exc:
            print(f"layerq keys create: {exc.message}", file=sys.stderr)
            return 2
        if as_json:
            print(json.dumps({"key_id": record.key_id, "tenant": record.tenant, "key": key}))
        else:
            print(key)
            print(f"key id {record.key_id}, tenant {record.tenant}: store the key now, it is not shown again",
                  file=sys.stderr)
        return 0
    if args.keys_command == "revoke":
        record = store.revoke(args.key_id)
        if record is None:
            print(f"layerq keys revoke: no key with id {args.key_id!r}", file=sys.stderr)
            return 1
        print(f"revoked {record.key_id} (tenant {record.tenant})")
        return 0
    rows = [{"key_id": k.key_id, "tenant": k.tenant, "name": k.name, "created_at": iso(k.created_at),
             "revoked_at": iso(k.revoked_at)} for k in store.list()]
    if as_json:
        print(json.dumps(rows))
    else:
        for row in rows:
            state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
            print(f"{row['key_id']}  {row['tenant']:<24} {row['created_at']}  {state}  {row['name']}")
    return 0
