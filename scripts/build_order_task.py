"""Write the second narrow task of the bundled world and its suite (deterministic bytes).

    python scripts/build_order_task.py

- core/forgetless/bundled/data/order-requests/{train,validation,test}.jsonl  (`bundled:order-requests`)
- core/forgetless/bundled/suites/world-v1-orders/  (`bundled:world-v1-orders`): the general tasks of
  world-v1 (copied, so the general scores of both jobs of a chain are comparable) with the order
  requests as the target task. Run it after scripts/build_world_data.py.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "core"))

from world.build import DEFAULT_SEED  # noqa: E402
from world.orders import LEAK_PATTERN, orders  # noqa: E402

BUNDLED = ROOT / "core" / "forgetless" / "bundled"


def _dump(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=True) + "\n")


def main() -> None:
    splits = orders(DEFAULT_SEED)
    for split, rows in splits.items():
        _dump(BUNDLED / "data" / "order-requests" / f"{split}.jsonl", rows)

    source = BUNDLED / "suites" / "world-v1"
    target = BUNDLED / "suites" / "world-v1-orders"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    suite = json.loads((source / "suite.json").read_text())
    tasks = []
    for task in suite["tasks"]:
        if task["category"] == "task":
            continue
        shutil.copyfile(source / task["path"], target / task["path"])
        tasks.append(task)
    items = [
        {"id": f"orders-{i:03d}", "prompt": row["prompt"], "target": row["response"]}
        for i, row in enumerate(splits["test"][:150])
    ]
    _dump(target / "order_requests.jsonl", items)
    longest = max(len(item["target"].split()) for item in items)
    tasks.append(
        {"name": "order_requests", "category": "task", "path": "order_requests.jsonl", "scorer": "exact_match",
         "max_new_tokens": longest + 4}
    )
    suite.update(
        name="world-v1-orders",
        description="world-v1's general tasks with the order-request task (bundled:order-requests) as the target: "
        "the suite of the second job of the bundled sequential pair. Order prompts leaking into answers: "
        f"pattern {LEAK_PATTERN!r}.",
        tasks=tasks,
    )
    (target / "suite.json").write_text(json.dumps(suite, indent=2) + "\n", encoding="utf-8")
    print(f"order-requests: { {k: len(v) for k, v in splits.items()} }; suite world-v1-orders: {len(tasks)} tasks")


if __name__ == "__main__":
    main()
