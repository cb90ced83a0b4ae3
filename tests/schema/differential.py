#!/usr/bin/env python3
"""Generated instances for a schema, each with Python jsonschema's verdict, for the differential
test in tests/schema_validate.rs.

    python3 tests/schema/differential.py SCHEMA.json OUT.json COUNT SEED

Instances are mutations of valid-looking documents (dropped and extra keys, wrong types, numbers
out of range, strings off pattern, empty and oversized arrays), so both verdicts occur often.
Writes [{"instance": ..., "valid": bool}, ...].
"""
import json
import random
import sys

import jsonschema

schema_path, out, count, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
schema = json.load(open(schema_path))
validator = jsonschema.validators.validator_for(schema)(schema)
rng = random.Random(seed)

SCALARS = [None, True, False, 0, -1, 1, 2, 7, 2.5, 3.0, 1e9, "", "x", "ABC-1", "abc-1", "ABC-", "XYZ-42", "gift", [], {}]


def valid_item():
    item = {"sku": rng.choice(["ABC-1", "XYZ-42", "QRS-12345"])}
    if rng.random() < 0.6:
        item["qty"] = rng.choice([1, 2, 10, 3.0])
    return item


def valid_doc():
    doc = {
        "id": rng.choice([1, 7, 123456, 2.0]),
        "items": [valid_item() for _ in range(rng.randint(1, 3))],
        "kind": rng.choice(["retail", "wholesale", "gift"]),
    }
    if doc["kind"] == "gift" or rng.random() < 0.2:
        doc["gift_message"] = rng.choice(["happy birthday", "x"])
    if rng.random() < 0.5:
        doc["customer"] = {"email": rng.choice(["a@b.co", "ann@example.org"])}
        if rng.random() < 0.5:
            doc["customer"]["vip"] = rng.choice([True, False])
    if rng.random() < 0.3:
        doc["note"] = rng.choice(["", "leave at door", "y" * 200])
    if rng.random() < 0.2:
        doc["extra"] = scalar()
    return doc


def scalar():
    return rng.choice(SCALARS)


def mutate(doc):
    """One change that may or may not break validity."""
    doc = json.loads(json.dumps(doc))
    action = rng.choice(["drop", "add", "retype", "item", "items", "email", "note", "kind"])
    if action == "drop":
        del doc[rng.choice(list(doc))]
    elif action == "add":
        doc[rng.choice(["surprise", "extra", "gift_message", "Id"])] = scalar()
    elif action == "retype":
        doc[rng.choice(list(doc))] = scalar()
    elif action == "item":
        target = rng.choice(doc["items"])
        target[rng.choice(["sku", "qty", "price"])] = scalar()
    elif action == "items":
        doc["items"] = rng.choice([[], [valid_item() for _ in range(4)], "ABC-1", [valid_item(), 5]])
    elif action == "email":
        doc["customer"] = {"email": rng.choice(["nobody", "a@b@c", "", "x@y"]), "vip": rng.choice([True, "yes"])}
    elif action == "note":
        doc["note"] = rng.choice(["z" * 201, 5, "fine"])
    else:
        doc["kind"] = rng.choice(["gift", "Retail", "", None])
    return doc


cases = []
for _ in range(count):
    roll = rng.random()
    instance = valid_doc() if roll < 0.35 else mutate(valid_doc()) if roll < 0.95 else scalar()
    cases.append({"instance": instance, "valid": validator.is_valid(instance)})
json.dump(cases, open(out, "w"))
