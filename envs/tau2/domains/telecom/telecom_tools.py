"""tau2 telecom agent tools: customer lookup, lines, bills, roaming, data refuelling.

Semantics, return values and error texts follow upstream
``src/tau2/domains/telecom/tools.py`` (read, not copied); "today" is tau2's fixed
2025-02-25. Besides the 13 tools the agent sees, the public non-tool methods are
what task data calls: ``set_data_usage``, ``suspend_line_for_overdue_bill``
(initialization actions) and the ``assert_*`` env assertions.

One difference on purpose: a refuel charge on a customer without a draft bill
creates one, and tau2 names it ``B`` + 8 random hex digits (uuid4); we name it
``B`` + 8 hex digits of a counter, so gold and predicted DBs agree.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from areal_env.envs.tau2.domains.telecom.telecom_models import (
    TODAY,
    Bill,
    BillStatus,
    Customer,
    Device,
    Line,
    LineItem,
    LineStatus,
    Plan,
    TelecomDB,
)
from areal_env.envs.tau2.toolkit import Toolkit, ToolType, is_tool


class TelecomTools(Toolkit[TelecomDB]):
    """The telecom domain's agent tools (see the module docstring)."""

    # ---- lookups -----------------------------------------------------------------------

    @is_tool(ToolType.READ)
    def get_customer_by_phone(self, phone_number: str) -> Customer:
        """Find a customer by their primary contact number or one of their lines' numbers.

        Args:
            phone_number: The phone number to search for.
        """
        for customer in self.db.customers:
            if customer.phone_number == phone_number:
                return customer
            for line_id in customer.line_ids:
                if self._line(line_id).phone_number == phone_number:
                    return customer
        raise ValueError(f"Customer with phone number {phone_number} not found")

    @is_tool(ToolType.READ)
    def get_customer_by_id(self, customer_id: str) -> Customer:
        """Retrieve a customer directly by their unique ID.

        Args:
            customer_id: The unique identifier of the customer.
        """
        for customer in self.db.customers:
            if customer.customer_id == customer_id:
                return customer
        raise ValueError(f"Customer with ID {customer_id} not found")

    @is_tool(ToolType.READ)
    def get_customer_by_name(self, full_name: str, dob: str) -> list[Customer]:
        """Search customers by full name and date of birth; may match several.

        The name match ignores case; the date of birth disambiguates similar names.

        Args:
            full_name: The full name of the customer.
            dob: Date of birth for verification, in the format YYYY-MM-DD.
        """
        return [
            c
            for c in self.db.customers
            if c.full_name.lower() == full_name.lower() and c.date_of_birth == dob
        ]

    @is_tool(ToolType.READ)
    def get_details_by_id(self, id: str) -> Line | Device | Bill | Customer | Plan:
        """Retrieve the details for an ID of a Customer, Line, Device, Bill, or Plan.

        Args:
            id: The ID of the object to retrieve.
        """
        if id.startswith("L"):
            return self._line(id)
        if id.startswith("D"):
            return self._device(id)
        if id.startswith("B"):
            return self._bill(id)
        if id.startswith("C"):
            return self.get_customer_by_id(id)
        if id.startswith("P"):
            return self._plan(id)
        raise ValueError(f"Unknown ID format or type: {id}")

    # ---- lines -------------------------------------------------------------------------

    @is_tool(ToolType.WRITE)
    def suspend_line(self, customer_id: str, line_id: str, reason: str) -> dict[str, Any]:
        """Suspend an active line (max 6 months); records the suspension start date.

        Args:
            customer_id: ID of the customer who owns the line.
            line_id: ID of the line to suspend.
            reason: Reason for suspension.
        """
        line = self._target_line(customer_id, line_id)
        if line.status != LineStatus.ACTIVE:
            raise ValueError("Line must be active to suspend")
        line.status = LineStatus.SUSPENDED
        line.suspension_start_date = TODAY
        return {
            "message": "Line suspended successfully. $5/month holding fee will apply.",
            "line": line,
        }

    @is_tool(ToolType.WRITE)
    def resume_line(self, customer_id: str, line_id: str) -> dict[str, Any]:
        """Resume a suspended (or pending activation) line; clears the suspension date.

        Args:
            customer_id: ID of the customer who owns the line.
            line_id: ID of the line to resume.
        """
        line = self._target_line(customer_id, line_id)
        if line.status not in (LineStatus.SUSPENDED, LineStatus.PENDING_ACTIVATION):
            raise ValueError("Line must be suspended to resume")
        line.status = LineStatus.ACTIVE
        line.suspension_start_date = None
        return {"message": "Line resumed successfully", "line": line}

    # ---- billing -----------------------------------------------------------------------

    @is_tool(ToolType.READ)
    def get_bills_for_customer(self, customer_id: str, limit: int = 12) -> list[Bill]:
        """Retrieve a customer's bills, most recent (by issue date) first.

        Args:
            customer_id: ID of the customer.
            limit: Maximum number of bills to return.
        """
        customer = self.get_customer_by_id(customer_id)
        bills = [self._bill(bill_id) for bill_id in customer.bill_ids]
        return sorted(bills, key=lambda b: b.issue_date, reverse=True)[:limit]

    @is_tool(ToolType.WRITE)
    def send_payment_request(self, customer_id: str, bill_id: str) -> str:
        """Send the customer a payment request for one of their bills.

        The bill must belong to the customer, and no other bill of theirs may already
        be awaiting payment. The bill becomes "Awaiting Payment". This does not check
        whether the bill is already paid: always check the bill status first.

        Args:
            customer_id: ID of the customer who owns the bill.
            bill_id: ID of the bill to send payment request for.
        """
        customer = self.get_customer_by_id(customer_id)
        if self._bills_awaiting_payment(customer):
            raise ValueError("A bill is already awaiting payment for this customer")
        if bill_id not in customer.bill_ids:
            raise ValueError(f"Bill {bill_id} not found for customer {customer_id}")
        bill = self._bill(bill_id)
        bill.status = BillStatus.AWAITING_PAYMENT
        return f"Payment request sent to the customer for bill {bill.bill_id}"

    # ---- usage and roaming -------------------------------------------------------------

    @is_tool(ToolType.READ)
    def get_data_usage(self, customer_id: str, line_id: str) -> dict[str, Any]:
        """Current billing cycle's data usage of a line: used, limit, refuelled, cycle end.

        Args:
            customer_id: ID of the customer who owns the line.
            line_id: ID of the line to check usage for.
        """
        line = self._target_line(customer_id, line_id)
        plan = self._plan(line.plan_id)
        # tau2's cycle end: the last day of this month (its December case keeps the year).
        month = TODAY.month + 1 if TODAY.month < 12 else 1
        cycle_end = date(TODAY.year, month, 1) - timedelta(days=1)
        return {
            "line_id": line_id,
            "data_used_gb": line.data_used_gb,
            "data_limit_gb": plan.data_limit_gb,
            "data_refueling_gb": line.data_refueling_gb,
            "cycle_end_date": cycle_end,
        }

    @is_tool(ToolType.WRITE)
    def enable_roaming(self, customer_id: str, line_id: str) -> str:
        """Enable international roaming on a line.

        Args:
            customer_id: ID of the customer who owns the line.
            line_id: ID of the line to enable roaming for.
        """
        line = self._target_line(customer_id, line_id)
        if line.roaming_enabled:
            return "Roaming was already enabled"
        line.roaming_enabled = True
        return "Roaming enabled successfully"

    @is_tool(ToolType.WRITE)
    def disable_roaming(self, customer_id: str, line_id: str) -> str:
        """Disable international roaming on a line.

        Args:
            customer_id: ID of the customer who owns the line.
            line_id: ID of the line to disable roaming for.
        """
        line = self._target_line(customer_id, line_id)
        if not line.roaming_enabled:
            return "Roaming was already disabled"
        line.roaming_enabled = False
        return "Roaming disabled successfully"

    @is_tool(ToolType.WRITE)
    def refuel_data(self, customer_id: str, line_id: str, gb_amount: float) -> dict[str, Any]:
        """Add data to a line for this cycle, charged at the plan's refuelling rate.

        The charge goes on the customer's draft bill (one is created if none exists).

        Args:
            customer_id: ID of the customer who owns the line.
            line_id: ID of the line to refuel data for.
            gb_amount: Amount of data to add in gigabytes.
        """
        line = self._target_line(customer_id, line_id)
        if gb_amount <= 0:
            raise ValueError("Refuel amount must be positive")
        plan = self._plan(line.plan_id)
        price = plan.data_refueling_price_per_gb
        charge = gb_amount * price
        line.data_refueling_gb += gb_amount
        self._charge(customer_id, charge, f"Data refueling: {gb_amount} GB at ${price}/GB")
        return {
            "message": (
                f"Successfully added {gb_amount} GB of data for line {line_id} for ${charge:.2f}"
            ),
            "new_data_refueling_gb": line.data_refueling_gb,
            "charge": charge,
        }

    @is_tool(ToolType.GENERIC)
    def transfer_to_human_agents(self, summary: str) -> str:
        """Transfer the user to a human agent, with a summary of the user's issue.

        Only transfer if the user explicitly asks for a human agent, or if, given the
        policy and the available tools, you cannot solve the user's issue.

        Args:
            summary: A summary of the user's issue.
        """
        return "Transfer successful"

    # ---- task setup (initialization actions) -------------------------------------------

    def get_available_plan_ids(self) -> list[str]:
        """Ids of every plan (tau2 has this as a public non-tool helper)."""
        return [plan.plan_id for plan in self.db.plans]

    def set_data_usage(self, customer_id: str, line_id: str, data_used_gb: float) -> str:
        """Set a line's data usage (sets up the data-exceeded tasks)."""
        self._target_line(customer_id, line_id).data_used_gb = data_used_gb
        return f"Data usage set to {data_used_gb} GB for line {line_id}"

    def suspend_line_for_overdue_bill(
        self, customer_id: str, line_id: str, new_bill_id: str, contract_ended: bool
    ) -> str:
        """Suspend an active line for an unpaid bill ``new_bill_id`` (last month's charge).

        Sets up the suspended-line tasks: the agent must get the overdue bill paid
        and the line resumed.
        """
        line = self._line(line_id)
        if line.status != LineStatus.ACTIVE:
            raise ValueError("Line must be active to suspend for unpaid bill")
        plan = self._plan(line.plan_id)
        amount = plan.price_per_month
        if amount <= 0:
            raise ValueError("Amount must be positive for overdue bill")
        customer = self.get_customer_by_id(customer_id)
        if any(self._bill(b).status == BillStatus.OVERDUE for b in customer.bill_ids):
            raise ValueError("Customer already has an overdue bill")
        last_month_end = TODAY.replace(day=1) - timedelta(days=1)
        last_month_start = last_month_end.replace(day=1)
        bill = Bill(
            bill_id=new_bill_id,
            customer_id=customer_id,
            period_start=last_month_start,
            period_end=last_month_end,
            issue_date=last_month_start,
            total_due=0,
            due_date=last_month_start + timedelta(days=14),
            status=BillStatus.OVERDUE,
        )
        bill.line_items.append(
            LineItem(
                description=f"Charge for line {line.line_id}",
                amount=amount,
                date=TODAY,
                item_type="Charge",
            )
        )
        bill.total_due += amount
        self.db.bills.append(bill)
        customer.bill_ids.append(new_bill_id)
        line.status = LineStatus.SUSPENDED
        line.suspension_start_date = TODAY
        if contract_ended:
            line.contract_end_date = last_month_end
        return (
            f"Line {line_id} suspended for unpaid bill {new_bill_id}. "
            f"Contract ended: {contract_ended}"
        )

    # ---- env assertions ----------------------------------------------------------------

    def assert_data_refueling_amount(
        self, customer_id: str, line_id: str, expected_amount: float
    ) -> bool:
        """Whether the line's refuelled data equals ``expected_amount`` (within 1e-6 GB)."""
        line = self._target_line(customer_id, line_id)
        return abs(line.data_refueling_gb - expected_amount) < 1e-6

    def assert_line_status(self, customer_id: str, line_id: str, expected_status: str) -> bool:
        """Whether the line has ``expected_status``."""
        return self._target_line(customer_id, line_id).status == LineStatus(expected_status)

    def assert_overdue_bill_exists(self, customer_id: str, overdue_bill_id: str) -> bool:
        """True when the customer has that bill and it is overdue; raises otherwise."""
        customer = self.get_customer_by_id(customer_id)
        if overdue_bill_id not in customer.bill_ids:
            raise ValueError(f"Overdue bill {overdue_bill_id} not found")
        if self._bill(overdue_bill_id).status != BillStatus.OVERDUE:
            raise ValueError(f"Overdue bill {overdue_bill_id} is not overdue")
        return True

    def assert_no_overdue_bill(self, overdue_bill_id: str) -> bool:
        """Whether the bill is gone or paid."""
        try:
            return self._bill(overdue_bill_id).status == BillStatus.PAID
        except ValueError:
            return True

    # ---- helpers (also used by the sync with the user's phone) -------------------------

    def _line(self, line_id: str) -> Line:
        for line in self.db.lines:
            if line.line_id == line_id:
                return line
        raise ValueError(f"Line with ID {line_id} not found")

    def _line_by_phone(self, phone_number: str) -> Line:
        for line in self.db.lines:
            if line.phone_number == phone_number:
                return line
        raise ValueError(f"Line with phone number {phone_number} not found")

    def _plan(self, plan_id: str) -> Plan:
        for plan in self.db.plans:
            if plan.plan_id == plan_id:
                return plan
        raise ValueError(f"Plan with ID {plan_id} not found")

    def _device(self, device_id: str) -> Device:
        for device in self.db.devices:
            if device.device_id == device_id:
                return device
        raise ValueError(f"Device with ID {device_id} not found")

    def _bill(self, bill_id: str) -> Bill:
        for bill in self.db.bills:
            if bill.bill_id == bill_id:
                return bill
        raise ValueError(f"Bill with ID {bill_id} not found")

    def _target_line(self, customer_id: str, line_id: str) -> Line:
        customer = self.get_customer_by_id(customer_id)
        if line_id not in customer.line_ids:
            raise ValueError(f"Line {line_id} not found for customer {customer_id}")
        return self._line(line_id)

    def _bills_awaiting_payment(self, customer: Customer) -> list[Bill]:
        bills = [self._bill(b) for b in customer.bill_ids]
        return [b for b in bills if b.status == BillStatus.AWAITING_PAYMENT]

    def _set_bill_to_paid(self, bill_id: str) -> None:
        self._bill(bill_id).status = BillStatus.PAID

    def _charge(self, customer_id: str, amount: float, description: str) -> None:
        """Put a one-time charge (or credit) on the customer's draft bill."""
        customer = self.get_customer_by_id(customer_id)
        draft = next(
            (b for b in (self._bill(i) for i in customer.bill_ids) if b.status == BillStatus.DRAFT),
            None,
        )
        if draft is None:
            start = (TODAY.replace(day=1) + timedelta(days=32)).replace(day=1)
            after = (
                start.replace(month=start.month + 1)
                if start.month < 12
                else start.replace(month=1, year=start.year + 1)
            )
            draft = Bill(
                bill_id=self._new_bill_id(),
                customer_id=customer_id,
                period_start=start,
                period_end=after - timedelta(days=1),
                issue_date=start,
                total_due=0,
                due_date=start + timedelta(days=14),
                status=BillStatus.DRAFT,
            )
            self.db.bills.append(draft)
            customer.bill_ids.append(draft.bill_id)
        draft.line_items.append(
            LineItem(
                description=description,
                amount=amount,
                date=TODAY,
                item_type="Credit" if amount < 0 else "Charge",
            )
        )
        draft.total_due += amount

    def _new_bill_id(self) -> str:
        taken = {b.bill_id for b in self.db.bills}
        n = len(taken) + 1
        while f"B{n:08x}" in taken:
            n += 1
        return f"B{n:08x}"
