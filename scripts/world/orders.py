"""A second narrow task for sequential fine-tuning (replay): purchase requests → order records.

`hello , i am alice , can i buy a red phone in paris ?` →
`dear alice ; product = phone ; colour = red ; city = paris ; status = open`

Like the support tickets, every word already occurs in pretraining, while this house format (a
`key = value ;` record that opens with `dear <name>`) does not. It is the second job of the
bundled replay pair (examples/replay-2.yaml): learning it after the support tickets overwrites
the ticket skill unless the first job's data is replayed.

Deterministic from the world seed; pure Python.
"""

from __future__ import annotations

import random

from . import lexicon as L

ORDER_TEMPLATES = (
    "hello , i am {name} , can i buy a {colour} {product} in {city} ?",
    "{name} writes : please sell me a {colour} {product} in {city}",
    "hi it is {name} , i buy a {colour} {product} , my city is {city}",
    "request by {name} : buy a {colour} {product} to {city} please",
)
ORDER_REPLY = "dear {name} ; product = {product} ; colour = {colour} ; city = {city} ; status = open"
LEAK_PATTERN = r"^dear [a-z]+ ; product = "


def orders(seed: int, n_train: int = 4000, n_val: int = 400, n_test: int = 400) -> dict[str, list[dict]]:
    rng = random.Random(f"{seed}:orders")
    combos = [
        (t, n, p, c, city)
        for t in range(len(ORDER_TEMPLATES))
        for n in L.NAMES
        for p in L.PRODUCTS
        for c in L.COLOURS
        for city in L.CITIES
    ]
    picked = rng.sample(combos, n_train + n_val + n_test)
    out: dict[str, list[dict]] = {}
    start = 0
    for split, size in (("train", n_train), ("validation", n_val), ("test", n_test)):
        rows = []
        for index, (t, name, product, colour, city) in enumerate(picked[start : start + size]):
            fields = {"name": name, "product": product, "colour": colour, "city": city}
            rows.append(
                {
                    "id": f"order-{split}-{index:05d}",
                    "prompt": ORDER_TEMPLATES[t].format(**fields),
                    "response": ORDER_REPLY.format(**fields),
                    "skill": "orders",
                }
            )
        out[split] = rows
        start += size
    return out
