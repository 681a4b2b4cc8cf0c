"""tau2's retail agent tools: look up users, orders and items; change pending and delivered orders.

Semantics and error texts follow upstream ``src/tau2/domains/retail/tools.py``
(read, not copied), including its quirks, because the DB reward replays the
gold actions and the agent's calls through these same tools and tau2 defines
what the right end state is:

- ``modify_pending_order_items`` prices every changed item at the price (and
  options) of the *last* new item of the call, as upstream does; the payment or
  refund it records is the correct, unrounded sum of the differences.
- ``cancel_pending_order`` and ``modify_pending_order_items`` want status
  ``pending`` exactly; the address and payment changes also accept
  ``pending (item modified)``.
- Checks run in upstream's order, and writes happen where upstream makes them,
  so a call that fails half-way leaves the same partial change.
- Several gold actions of the task set fail on purpose (an exchange asked of a
  pending order, an unavailable item...): their error text is the expected
  answer and the DB is left as it was.

``calculate`` evaluates the arithmetic itself (an AST walk with Python's own
operators, so results and error texts equal upstream's ``eval``) instead of
calling ``eval``, and refuses a power whose result would be astronomically
large, where upstream would hang.
"""

from __future__ import annotations

import json

from areal_env.envs.tau2.calculate import calculate
from areal_env.envs.tau2.domains.retail.retail_models import (
    GiftCard,
    Order,
    OrderItem,
    OrderPayment,
    PaymentMethod,
    Product,
    RetailDB,
    User,
    UserAddress,
    Variant,
)
from areal_env.envs.tau2.toolkit import Toolkit, ToolType, is_tool

CANCEL_REASONS = ("no longer needed", "ordered by mistake")
"""The reasons a cancellation may give (anything else: ``Invalid reason``)."""


class RetailTools(Toolkit[RetailDB]):
    """The retail domain's agent tools.

    Named as upstream's class, so Python's argument-error texts read the same:
    ``RetailTools.get_user_details() missing 1 required positional argument: 'user_id'``.
    """

    # ---- lookups shared by the tools (upstream's error texts) ------------------------

    # A write tool asks for ``write=True``: the DB shares records copy-on-write
    # (see retail_models), so a record must be made private before it changes.

    def _order(self, order_id: str, write: bool = False) -> Order:
        if order_id not in self.db.orders:
            raise ValueError("Order not found")
        return self.db.writable_order(order_id) if write else self.db.orders[order_id]

    def _user(self, user_id: str, write: bool = False) -> User:
        if user_id not in self.db.users:
            raise ValueError("User not found")
        return self.db.writable_user(user_id) if write else self.db.users[user_id]

    def _product(self, product_id: str) -> Product:
        if product_id not in self.db.products:
            raise ValueError("Product not found")
        return self.db.products[product_id]

    def _variant(self, product_id: str, item_id: str) -> Variant:
        product = self._product(product_id)
        if item_id not in product.variants:
            raise ValueError("Variant not found")
        return product.variants[item_id]

    def _payment_method(
        self, user_id: str, payment_method_id: str, write: bool = False
    ) -> PaymentMethod:
        user = self._user(user_id, write)
        if payment_method_id not in user.payment_methods:
            raise ValueError("Payment method not found")
        return user.payment_methods[payment_method_id]

    @staticmethod
    def _first_item(order: Order, item_id: str) -> OrderItem:
        item = next((it for it in order.items if it.item_id == item_id), None)
        if item is None:
            raise ValueError(f"Item {item_id} not found")
        return item

    @staticmethod
    def _missing_items(order: Order, item_ids: list[str]) -> str | None:
        """The first id asked for more often than the order holds it (duplicates count)."""
        held = [it.item_id for it in order.items]
        return next((i for i in item_ids if item_ids.count(i) > held.count(i)), None)

    # ---- generic --------------------------------------------------------------------

    @is_tool(ToolType.GENERIC)
    def calculate(self, expression: str) -> str:
        """Work out a mathematical expression and give the result rounded to 2 decimals.

        Args:
            expression: The expression to work out, such as '2 + 2'. Only numbers, the operators
                +, -, *, /, parentheses and spaces are allowed.
        """
        return calculate(expression)

    @is_tool(ToolType.GENERIC)
    def transfer_to_human_agents(self, summary: str) -> str:
        """Hand the user over to a human agent, with a summary of the user's issue.

        Transfer only when the user explicitly asks for a human agent, or when the policy and
        the available tools do not let you solve the user's issue.

        Args:
            summary: A summary of the user's issue.
        """
        return "Transfer successful"

    # ---- reads ----------------------------------------------------------------------

    @is_tool(ToolType.READ)
    def find_user_id_by_email(self, email: str) -> str:
        """Look up a user id by email address (case-insensitive); an error when none matches.

        Args:
            email: The user's email, such as 'something@example.com'.
        """
        for user_id, user in self.db.users.items():
            if user.email.lower() == email.lower():
                return user_id
        raise ValueError("User not found")

    @is_tool(ToolType.READ)
    def find_user_id_by_name_zip(self, first_name: str, last_name: str, zip: str) -> str:
        """Look up a user id by first name, last name and zip code; an error when none matches.

        Prefer finding the user by email; use this only when the email is not found or the
        user cannot remember it.

        Args:
            first_name: The customer's first name, such as 'John'.
            last_name: The customer's last name, such as 'Doe'.
            zip: The customer's zip code, such as '12345'.
        """
        for user_id, user in self.db.users.items():
            if (
                user.name.first_name.lower() == first_name.lower()
                and user.name.last_name.lower() == last_name.lower()
                and user.address.zip == zip
            ):
                return user_id
        raise ValueError("User not found")

    @is_tool(ToolType.READ)
    def get_user_details(self, user_id: str) -> User:
        """Get a user's details: name, address, email, payment methods and order ids.

        Args:
            user_id: The user id, such as 'sara_doe_496'.
        """
        return self._user(user_id)

    @is_tool(ToolType.READ)
    def get_order_details(self, order_id: str) -> Order:
        """Get an order's status and details.

        Args:
            order_id: The order id, such as '#W0000000'. Note the '#' at the start of the id.
        """
        return self._order(order_id)

    @is_tool(ToolType.READ)
    def get_product_details(self, product_id: str) -> Product:
        """Get a product's inventory: every item of it with its options, availability and price.

        Args:
            product_id: The product id, such as '6086499569'. A product id is not an item id.
        """
        return self._product(product_id)

    @is_tool(ToolType.READ)
    def get_item_details(self, item_id: str) -> Variant:
        """Get one item's inventory details: options, availability and price.

        Args:
            item_id: The item id, such as '6086499569'. An item id is not a product id.
        """
        for product in self.db.products.values():
            if item_id in product.variants:
                return product.variants[item_id]
        raise ValueError("Item not found")

    @is_tool(ToolType.READ)
    def list_all_product_types(self) -> str:
        """List the name and product id of every product type (the store has 50).

        Each product type has several items, each with its own item id and options. The answer
        is a JSON object from product name to product id, sorted by name.
        """
        names = {p.name: p.product_id for p in self.db.products.values()}
        return json.dumps(names, sort_keys=True)

    # ---- writes ---------------------------------------------------------------------

    @is_tool(ToolType.WRITE)
    def cancel_pending_order(self, order_id: str, reason: str) -> Order:
        """Cancel a pending order; processed or delivered orders cannot be cancelled.

        Explain the cancellation and get the user's explicit confirmation (yes/no) first. The
        order becomes 'cancelled' and every payment is refunded: at once to a gift card,
        otherwise within 5-7 business days. Returns the order after the cancellation.

        Args:
            order_id: The order id, such as '#W0000000'. Note the '#' at the start of the id.
            reason: Why the order is cancelled: 'no longer needed' or 'ordered by mistake'.
        """
        order = self._order(order_id, write=True)
        if order.status != "pending":
            raise ValueError("Non-pending order cannot be cancelled")
        if reason not in CANCEL_REASONS:
            raise ValueError("Invalid reason")
        refunds = []
        for payment in order.payment_history:
            refunds.append(
                OrderPayment(
                    transaction_type="refund",
                    amount=payment.amount,
                    payment_method_id=payment.payment_method_id,
                )
            )
            method = self._payment_method(order.user_id, payment.payment_method_id, write=True)
            if isinstance(method, GiftCard):
                method.balance = round(method.balance + payment.amount, 2)
        order.status = "cancelled"
        order.cancel_reason = reason  # type: ignore[assignment]  # checked against CANCEL_REASONS
        order.payment_history.extend(refunds)
        return order

    @is_tool(ToolType.WRITE)
    def modify_pending_order_address(
        self,
        order_id: str,
        address1: str,
        address2: str,
        city: str,
        state: str,
        country: str,
        zip: str,
    ) -> Order:
        """Change the shipping address of a pending order.

        Explain the change and get the user's explicit confirmation (yes/no) first. Returns the
        order after the change.

        Args:
            order_id: The order id, such as '#W0000000'. Note the '#' at the start of the id.
            address1: The first address line, such as '123 Main St'.
            address2: The second address line, such as 'Apt 1' or ''.
            city: The city, such as 'San Francisco'.
            state: The state, such as 'CA'.
            country: The country, such as 'USA'.
            zip: The zip code, such as '12345'.
        """
        order = self._order(order_id, write=True)
        if "pending" not in order.status:
            raise ValueError("Non-pending order cannot be modified")
        order.address = UserAddress(
            address1=address1,
            address2=address2,
            city=city,
            state=state,
            country=country,
            zip=zip,
        )
        return order

    @is_tool(ToolType.WRITE)
    def modify_pending_order_items(
        self,
        order_id: str,
        item_ids: list[str],
        new_item_ids: list[str],
        payment_method_id: str,
    ) -> Order:
        """Swap items of a pending order for other items of the same product; only once per order.

        Explain the change and get the user's explicit confirmation (yes/no) first. The price
        difference is charged to, or refunded to, the given payment method. Returns the order
        after the change.

        Args:
            order_id: The order id, such as '#W0000000'. Note the '#' at the start of the id.
            item_ids: The item ids to change, each such as '1008292230'; an id may repeat.
            new_item_ids: The item ids to change them to, each such as '1008292230'; an id may
                repeat. Each must be of the same product as the item id in the same position.
            payment_method_id: The payment method that pays or receives the price difference,
                such as 'gift_card_0000000' or 'credit_card_0000000' (see the user's or the
                order's details).
        """
        order = self._order(order_id, write=True)
        if order.status != "pending":
            raise ValueError("Non-pending order cannot be modified")
        missing = self._missing_items(order, item_ids)
        if missing is not None:
            raise ValueError(f"{missing} not found")
        if len(item_ids) != len(new_item_ids):
            raise ValueError("The number of items to be exchanged should match")
        diff_price = 0.0
        variant: Variant | None = None
        for item_id, new_item_id in zip(item_ids, new_item_ids, strict=True):
            if item_id == new_item_id:
                raise ValueError("The new item id should be different from the old item id")
            item = self._first_item(order, item_id)
            variant = self._variant(item.product_id, new_item_id)
            if not variant.available:
                raise ValueError(f"New item {new_item_id} not found or available")
            diff_price += variant.price - item.price
        method = self._payment_method(order.user_id, payment_method_id, write=True)
        if isinstance(method, GiftCard) and method.balance < diff_price:
            raise ValueError("Insufficient gift card balance to pay for the new item")
        order.payment_history.append(
            OrderPayment(
                transaction_type="payment" if diff_price > 0 else "refund",
                amount=abs(diff_price),
                payment_method_id=payment_method_id,
            )
        )
        if isinstance(method, GiftCard):
            method.balance = round(method.balance - diff_price, 2)
        for item_id, new_item_id in zip(item_ids, new_item_ids, strict=True):
            item = self._first_item(order, item_id)
            item.item_id = new_item_id
            # Upstream's quirk, kept for the same end state: every changed item takes the
            # price and options of the last new item of the call.
            assert variant is not None
            item.price = variant.price
            item.options = dict(variant.options)
        order.status = "pending (item modified)"
        return order

    @is_tool(ToolType.WRITE)
    def modify_pending_order_payment(self, order_id: str, payment_method_id: str) -> Order:
        """Pay a pending order with another payment method.

        Explain the change and get the user's explicit confirmation (yes/no) first. The new method
        is charged the order's amount and the old one refunded. Returns the order after the change.

        Args:
            order_id: The order id, such as '#W0000000'. Note the '#' at the start of the id.
            payment_method_id: The new payment method, such as 'gift_card_0000000' or
                'credit_card_0000000' (see the user's or the order's details).
        """
        order = self._order(order_id, write=True)
        if "pending" not in order.status:
            raise ValueError("Non-pending order cannot be modified")
        method = self._payment_method(order.user_id, payment_method_id, write=True)
        history = order.payment_history
        if len(history) != 1 or history[0].transaction_type != "payment":
            raise ValueError("There should be exactly one payment for a pending order")
        old_method_id = history[0].payment_method_id
        if old_method_id == payment_method_id:
            raise ValueError("The new payment method should be different from the current one")
        amount = history[0].amount
        if isinstance(method, GiftCard) and method.balance < amount:
            raise ValueError("Insufficient gift card balance to pay for the order")
        history.extend(
            [
                OrderPayment(
                    transaction_type="payment", amount=amount, payment_method_id=payment_method_id
                ),
                OrderPayment(
                    transaction_type="refund", amount=amount, payment_method_id=old_method_id
                ),
            ]
        )
        if isinstance(method, GiftCard):
            method.balance = round(method.balance - amount, 2)
        old_method = self._payment_method(order.user_id, old_method_id, write=True)
        if isinstance(old_method, GiftCard):
            old_method.balance = round(old_method.balance + amount, 2)
        return order

    @is_tool(ToolType.WRITE)
    def modify_user_address(
        self,
        user_id: str,
        address1: str,
        address2: str,
        city: str,
        state: str,
        country: str,
        zip: str,
    ) -> User:
        """Change a user's default address.

        Explain the change and get the user's explicit confirmation (yes/no) first. Returns the
        user after the change.

        Args:
            user_id: The user id, such as 'sara_doe_496'.
            address1: The first address line, such as '123 Main St'.
            address2: The second address line, such as 'Apt 1' or ''.
            city: The city, such as 'San Francisco'.
            state: The state, such as 'CA'.
            country: The country, such as 'USA'.
            zip: The zip code, such as '12345'.
        """
        user = self._user(user_id, write=True)
        user.address = UserAddress(
            address1=address1,
            address2=address2,
            city=city,
            state=state,
            country=country,
            zip=zip,
        )
        return user

    @is_tool(ToolType.WRITE)
    def return_delivered_order_items(
        self, order_id: str, item_ids: list[str], payment_method_id: str
    ) -> Order:
        """Request the return of some items of a delivered order (it becomes 'return requested').

        A delivered order can be returned or exchanged only once. Explain the return and get the
        user's explicit confirmation (yes/no) first; the user then gets an email on how and where
        to return the items. Returns the order after the request.

        Args:
            order_id: The order id, such as '#W0000000'. Note the '#' at the start of the id.
            item_ids: The item ids to return, each such as '1008292230'; an id may repeat.
            payment_method_id: Where the refund goes: the order's original payment method or a
                gift card, such as 'gift_card_0000000' or 'credit_card_0000000'.
        """
        order = self._order(order_id, write=True)
        if order.status != "delivered":
            raise ValueError("Non-delivered order cannot be returned")
        user = self._user(order.user_id)
        method = self._payment_method(user.user_id, payment_method_id)
        if (
            not isinstance(method, GiftCard)
            and payment_method_id != order.payment_history[0].payment_method_id
        ):
            raise ValueError("Payment method should be the original payment method")
        if self._missing_items(order, item_ids) is not None:
            raise ValueError("Some item not found")
        order.status = "return requested"
        order.return_items = sorted(item_ids)
        order.return_payment_method_id = payment_method_id
        return order

    @is_tool(ToolType.WRITE)
    def exchange_delivered_order_items(
        self,
        order_id: str,
        item_ids: list[str],
        new_item_ids: list[str],
        payment_method_id: str,
    ) -> Order:
        """Request the exchange of items of a delivered order for other items of the same product.

        A delivered order can be returned or exchanged only once. Explain the exchange and get the
        user's explicit confirmation (yes/no) first. The order becomes 'exchange requested'.
        Returns the order after the request.

        Args:
            order_id: The order id, such as '#W0000000'. Note the '#' at the start of the id.
            item_ids: The item ids to exchange, each such as '1008292230'; an id may repeat.
            new_item_ids: The item ids to exchange them for, each such as '1008292230'; an id may
                repeat. Each must be of the same product as the item id in the same position.
            payment_method_id: The payment method that pays or receives the price difference,
                such as 'gift_card_0000000' or 'credit_card_0000000' (see the user's or the
                order's details).
        """
        order = self._order(order_id, write=True)
        if order.status != "delivered":
            raise ValueError("Non-delivered order cannot be exchanged")
        missing = self._missing_items(order, item_ids)
        if missing is not None:
            raise ValueError(f"Number of {missing} not found.")
        if len(item_ids) != len(new_item_ids):
            raise ValueError("The number of items to be exchanged should match.")
        # An int 0, as upstream: an empty exchange stores 0, not 0.0 (the hash sees the difference).
        diff_price: float = 0
        for item_id, new_item_id in zip(item_ids, new_item_ids, strict=True):
            item = self._first_item(order, item_id)
            variant = self._variant(item.product_id, new_item_id)
            if not variant.available:
                raise ValueError(f"New item {new_item_id} not found or available")
            diff_price += variant.price - item.price
        diff_price = round(diff_price, 2)
        method = self._payment_method(order.user_id, payment_method_id)
        if isinstance(method, GiftCard) and method.balance < diff_price:
            raise ValueError("Insufficient gift card balance to pay for the price difference")
        order.status = "exchange requested"
        order.exchange_items = sorted(item_ids)
        order.exchange_new_items = sorted(new_item_ids)
        order.exchange_payment_method_id = payment_method_id
        order.exchange_price_difference = diff_price
        return order
