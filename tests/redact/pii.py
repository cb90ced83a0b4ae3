#!/usr/bin/env python3
"""Realistic nested JSON full of personal data, made with Faker, for tests/redact.rs.

    python3 tests/redact/pii.py OUT.json SEED

Writes {"document": ..., "secrets": [...], "kept": [...]}: the document a service might answer with,
every personal value in it that must not survive redaction, and values that must.
"""
import json
import sys

from faker import Faker

out, seed = sys.argv[1], int(sys.argv[2])
fake = Faker("en_US")
Faker.seed(seed)
secrets, kept = [], []


def secret(value):
    secrets.append(value)
    return value


def keep(value):
    kept.append(value)
    return value


customers = []
for i in range(40):
    customers.append({
        "id": i,
        "plan": keep(fake.random_element(["free", "team", "enterprise"])),
        "name": secret(fake.name()),  # masked by json-fields
        "contact": {
            "email": secret(fake.email()),
            "phone": secret(fake.phone_number()),
            "note": f"call {secret(fake.phone_number())} or write to {secret(fake.email())}",
        },
        "ssn": secret(fake.ssn()),
        "payment": {"card": secret(fake.credit_card_number()), "iban": secret(fake.iban())},
        "sessions": [
            {"ip": secret(fake.ipv4()), "at": fake.iso8601()},
            {"ip": secret(fake.ipv6()), "at": fake.iso8601()},
        ],
        "tags": [keep(fake.word()) for _ in range(2)],
        "score": fake.pyfloat(min_value=0, max_value=100),
    })

with open(out, "w") as f:
    json.dump({"document": {"customers": customers, "count": len(customers)}, "secrets": secrets, "kept": kept}, f)
