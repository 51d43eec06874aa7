"""The shop's catalogue, generated deterministically: the same seed gives the same items,
prices, stock and image keys on every machine, so tests and demos can name item ids.

Item 1 is the flash sale's hot item (small stock, big discount)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache

SEED = 1111
ITEM_COUNT = 300

CATEGORIES: dict[str, tuple[list[str], list[str]]] = {
    "phones": (["Nova", "Mate", "Redmi", "Galaxy", "Pixel"], ["Pro", "Lite", "Ultra", "Max"]),
    "laptops": (["MateBook", "ThinkPad", "ZenBook", "Legion"], ["14", "16", "Air", "X1"]),
    "audio": (["FreeBuds", "AirDots", "SoundCore", "Beats"], ["Pro", "Studio", "Mini"]),
    "home": (["Rice Cooker", "Air Fryer", "Robot Vacuum", "Kettle"], ["Smart", "Plus", "S"]),
    "beauty": (["Serum", "Sun Cream", "Face Mask", "Lipstick"], ["Gold", "Hydra", "Rose"]),
    "snacks": (["Dried Mango", "Walnuts", "Hot Pot Base", "Green Tea"], ["Family", "Gift"]),
    "fashion": (["Down Jacket", "Sneakers", "Hoodie", "Scarf"], ["Classic", "Sport", "Wool"]),
    "books": (["Networking", "Algorithms", "Poetry", "History"], ["Vol. 1", "Illustrated"]),
}


@dataclass(frozen=True)
class Item:
    item_id: int
    name: str
    category: str
    price_cents: int
    initial_stock: int
    image_keys: tuple[str, ...]

    def __str__(self) -> str:
        return f"#{self.item_id} {self.name} ({self.category}) ¥{self.price_cents / 100:.2f}"


@cache
def items() -> dict[int, Item]:
    rng = random.Random(SEED)
    names = sorted(CATEGORIES)
    out: dict[int, Item] = {}
    for item_id in range(1, ITEM_COUNT + 1):
        category = names[(item_id - 1) % len(names)]
        heads, tails = CATEGORIES[category]
        name = f"{rng.choice(heads)} {rng.choice(tails)} {rng.randint(2, 99)}"
        price = rng.randint(5, 2000) * 100 - 1  # ...99 prices, as shops do
        stock = rng.randint(50, 5000)
        if item_id == 1:
            name, category, price, stock = "Double-11 Flash Sale Phone", "phones", 99_900, 100
        images = (f"/img/items/{item_id}/main.png", f"/img/items/{item_id}/thumb.png")
        out[item_id] = Item(item_id, name, category, price, stock, images)
    return out


def get(item_id: int) -> Item | None:
    return items().get(item_id)


@dataclass(frozen=True)
class CouponSeed:
    code: str
    kind: str  # FIXED | PERCENT
    value: int
    min_total_cents: int
    per_user_limit: int
    total_limit: int


# Seeded coupons; their validity window is set at seeding time (now .. now + 30 days).
COUPONS = (
    CouponSeed("D11-50OFF", "FIXED", 5_000, 30_000, 1, 0),
    CouponSeed("D11-10PCT", "PERCENT", 10, 0, 3, 0),
    CouponSeed("D11-FIRST100", "FIXED", 10_000, 50_000, 1, 100),
)
