"""tau2's telecom domain: a carrier's tech support, where the user operates their own phone.

The agent works on the carrier's DB (``db.toml``: customers, lines, plans, bills,
devices; ``telecom_tools.py``); the user works on their phone (``user_db.toml``;
``telecom_user_tools.py``) when the agent asks. The policy is tau2's "manual" one:
``main_policy.md`` and ``tech_support_manual.md``, each in its tag. Tasks are
``tasks.json`` (tau2's release: the 114 ``base`` tasks); they set the phone up
with ``initialization_actions`` and are scored by ``env_assertions`` on either side.

The two sides meet in :meth:`TelecomState.sync` (tau2's ``sync_tools``), run after
every tool call and setup function: what the carrier decided (line active,
roaming allowed, data used up, a bill awaiting payment) is copied to the phone's
surroundings, and a payment the user made on the phone marks the bill paid.
"""

from __future__ import annotations

from pathlib import Path

from areal_env.envs.tau2.domain import Domain, DomainState
from areal_env.envs.tau2.domains.telecom.telecom_models import (
    LineStatus,
    PaymentRequest,
    TelecomDB,
    TelecomUserDB,
)
from areal_env.envs.tau2.domains.telecom.telecom_tools import TelecomTools
from areal_env.envs.tau2.domains.telecom.telecom_user_tools import TelecomUserTools


class TelecomState(DomainState):
    """One telecom episode: the agent and user toolkits kept consistent by :meth:`sync`."""

    def sync(self) -> None:
        """Copy the carrier's decisions to the phone; settle a payment made on the phone.

        Nothing happens until ``set_user_info`` named the user's phone number; a
        number with no line (or a line with no plan) is a broken task and raises.
        """
        tools, user = self.tools, self.user_tools
        assert isinstance(tools, TelecomTools) and isinstance(user, TelecomUserTools)
        around = user.db.surroundings
        if around.phone_number is None:
            return
        line = tools._line_by_phone(around.phone_number)
        around.line_active = line.status == LineStatus.ACTIVE
        around.roaming_allowed = line.roaming_enabled
        plan = tools._plan(line.plan_id)
        around.mobile_data_usage_exceeded = (
            line.data_used_gb >= plan.data_limit_gb + line.data_refueling_gb
        )
        if around.payment_request is not None and around.payment_request.paid:
            tools._set_bill_to_paid(around.payment_request.bill_id)
            around.payment_request = None
        if around.payment_request is None:
            customer = tools.get_customer_by_phone(around.phone_number)
            awaiting = tools._bills_awaiting_payment(customer)
            if awaiting:
                bill = awaiting[0]
                around.payment_request = PaymentRequest(
                    bill_id=bill.bill_id, amount_due=bill.total_due
                )


def load_policy(folder: Path) -> str:
    """tau2's telecom policy (manual variant): the main policy and the tech-support manual."""
    main = (folder / "main_policy.md").read_text(encoding="utf-8")
    tech = (folder / "tech_support_manual.md").read_text(encoding="utf-8")
    return (
        f"<main_policy>\n{main}\n</main_policy>\n"
        f"<tech_support_policy>\n{tech}\n</tech_support_policy>"
    )


DOMAIN = Domain(
    name="telecom",
    db_type=TelecomDB,
    db_file="db.toml",
    tools=TelecomTools,
    policy_file="main_policy.md",
    user_db_type=TelecomUserDB,
    user_db_file="user_db.toml",
    user_tools=TelecomUserTools,
    state_type=TelecomState,
    load_policy=load_policy,
)
"""The telecom domain, as ``DOMAINS`` in ``envs/tau2/domain.py`` names it."""
