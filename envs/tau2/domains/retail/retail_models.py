"""tau2's retail database as pydantic models (``db.json``: products, users, orders).

The field set mirrors upstream ``src/tau2/domains/retail/data_model.py`` (read,
not copied) so that ``model_dump()``, and therefore tau2's DB hash, has the same
shape: in particular every order carries the optional cancel / exchange / return
fields, ``None`` until a tool sets them. The reward compares two states both
built by this code, so what matters most is that every tool changes them the
same way; keeping tau2's shape on top lets hashes be checked against tau2's.

Speed: the DB is 2.8 MB and every episode's reward builds two fresh copies of
it and hashes both (tau2 deep-copies and dumps it each time: about 0.4 s per
episode). :class:`RetailDB` instead copies **on write**: ``model_copy(deep=True)``
shares every user, order and product between the two DBs, and a tool that
changes a user or an order first takes a private deep copy of that one record
(:meth:`RetailDB.writable_order`, :meth:`RetailDB.writable_user`). Shared
records are never changed in place, so each caches its own JSON text and
:meth:`RetailDB.hash` joins those texts into exactly the string tau2 hashes.
The rule that makes this safe: change a record only through the tools (or
after ``writable_*``), never in place.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from areal_env.envs.tau2.toolkit import DB


class _Strict(BaseModel):
    """Base of the nested records: a key that tau2's schema lacks is a data error."""

    model_config = ConfigDict(extra="forbid")


class _Record(_Strict):
    """A top-level record (product, user, order) that caches its JSON text while shared."""

    _json: str | None = PrivateAttr(default=None)

    def json_text(self, cache: bool) -> str:
        """``json.dumps(model_dump(), sort_keys=True, default=str)``, kept when ``cache``.

        Only a shared record (one no DB may change in place) may be cached.
        """
        if self._json is not None:
            return self._json
        text = json.dumps(self.model_dump(), sort_keys=True, default=str)
        if cache:
            self._json = text
        return text

    def private_copy(self) -> Self:
        """A deep copy with no cached text, for a DB to change in place."""
        copy = self.model_copy(deep=True)
        copy._json = None
        return copy


class Variant(_Strict):
    """One purchasable item of a product (an "item" to the agent): options, stock, price."""

    item_id: str = Field(description="Unique identifier for the item")
    options: dict[str, str] = Field(description="Option name -> value, e.g. {'color': 'blue'}")
    available: bool = Field(description="Whether the item is in stock")
    price: float = Field(description="Price of the item")


class Product(_Record):
    """A product type and its items by item id."""

    name: str = Field(description="Name of the product")
    product_id: str = Field(description="Unique identifier for the product")
    variants: dict[str, Variant] = Field(description="Items of the product by item id")


class UserName(_Strict):
    """A customer's name (find_user_id_by_name_zip matches it case-insensitively)."""

    first_name: str
    last_name: str


class UserAddress(_Strict):
    """A postal address (a user's default one, or an order's shipping one)."""

    address1: str
    address2: str
    city: str
    country: str
    state: str
    zip: str


class CreditCard(_Strict):
    """A credit card on file (refunds take 5-7 business days)."""

    source: Literal["credit_card"]
    id: str
    brand: str
    last_four: str


class Paypal(_Strict):
    """A PayPal account on file."""

    source: Literal["paypal"]
    id: str


class GiftCard(_Strict):
    """A gift card: the only method with a balance, paid from and refunded to at once."""

    source: Literal["gift_card"]
    id: str
    balance: float


PaymentMethod = Annotated[CreditCard | GiftCard | Paypal, Field(discriminator="source")]
"""A payment method, told apart by ``source``."""


class User(_Record):
    """A customer: name, default address, email, payment methods and order ids."""

    user_id: str
    name: UserName
    address: UserAddress
    email: str
    payment_methods: dict[str, PaymentMethod]
    orders: list[str]


class OrderFulfillment(_Strict):
    """A shipment of some items of an order."""

    tracking_id: list[str]
    item_ids: list[str]


class OrderItem(_Strict):
    """An item of an order, with the price and options at purchase time."""

    name: str
    product_id: str
    item_id: str
    price: float
    options: dict[str, str]


class OrderPayment(_Strict):
    """A payment or refund on an order."""

    transaction_type: Literal["payment", "refund"]
    amount: float
    payment_method_id: str


OrderStatus = Literal[
    "processed",
    "pending",
    "pending (item modified)",
    "delivered",
    "cancelled",
    "exchange requested",
    "return requested",
]
"""The states an order goes through; tools move pending and delivered orders on."""

CancelReason = Literal["no longer needed", "ordered by mistake"]
"""The two reasons ``cancel_pending_order`` accepts."""


class Order(_Record):
    """An order: items, status, shipments, payments, and what a tool requested on it."""

    order_id: str
    user_id: str
    address: UserAddress
    items: list[OrderItem]
    status: OrderStatus
    fulfillments: list[OrderFulfillment]
    payment_history: list[OrderPayment]
    cancel_reason: CancelReason | None = None
    exchange_items: list[str] | None = None
    exchange_new_items: list[str] | None = None
    exchange_payment_method_id: str | None = None
    exchange_price_difference: float | None = None
    return_items: list[str] | None = None
    return_payment_method_id: str | None = None


class RetailDB(DB):
    """The retail agent-side DB: products, users and orders by id."""

    products: dict[str, Product]
    users: dict[str, User]
    orders: dict[str, Order]

    _owns_all: bool = PrivateAttr(default=True)
    """True until this DB's records are first shared by a copy (a loaded DB owns them all)."""
    _owned: set[tuple[str, str]] = PrivateAttr(default_factory=set)
    """``("users"|"orders", id)`` of the records this DB took private copies of since."""

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; ``deep=True`` shares the records copy-on-write (see the module docstring)."""
        if not deep or update:
            return super().model_copy(update=update, deep=deep)
        copy = type(self).model_construct(
            products=dict(self.products), users=dict(self.users), orders=dict(self.orders)
        )
        copy._owns_all = False
        # Both DBs now share every record: from here on the source copies on write too.
        self._owns_all, self._owned = False, set()
        return copy

    def _owns(self, kind: str, key: str) -> bool:
        return self._owns_all or (kind, key) in self._owned

    def writable_order(self, order_id: str) -> Order:
        """Order ``order_id`` (which must exist), private to this DB so a tool may change it."""
        if not self._owns("orders", order_id):
            self.orders[order_id] = self.orders[order_id].private_copy()
            self._owned.add(("orders", order_id))
        return self.orders[order_id]

    def writable_user(self, user_id: str) -> User:
        """User ``user_id`` (which must exist), private to this DB so a tool may change it."""
        if not self._owns("users", user_id):
            self.users[user_id] = self.users[user_id].private_copy()
            self._owned.add(("users", user_id))
        return self.users[user_id]

    def hash(self) -> str:
        """tau2's hash (:meth:`DB.hash`), from the records' cached JSON texts.

        ``json.dumps(..., sort_keys=True)`` of the whole dump is the records'
        own texts joined in key order, so the digest is the same, byte for byte.
        """
        # Products are never written by a tool, so they are always shared once copied.
        tables: list[tuple[str, Mapping[str, _Record]]] = [
            ("orders", self.orders),
            ("products", self.products),
            ("users", self.users),
        ]
        parts = []
        for kind, table in tables:
            entries = ", ".join(
                f"{json.dumps(key)}: {table[key].json_text(not self._owns(kind, key))}"
                for key in sorted(table)
            )
            parts.append(f"{json.dumps(kind)}: {{{entries}}}")
        return hashlib.sha256(("{" + ", ".join(parts) + "}").encode()).hexdigest()
