"""tau2 telecom data: the carrier's DB (``db.toml``) and the user's phone (``user_db.toml``).

Field for field as upstream ``src/tau2/domains/telecom/data_model.py`` and
``user_data_model.py`` (read, not copied), so both TOML files validate and the
hashes are tau2's. Every model forbids unknown keys, as tau2's ``BaseModelNoExtra``,
so a typo in task data fails loudly instead of being dropped. Enums are ``StrEnum``:
they dump and hash as their value, as tau2's ``str, Enum`` do.

The agent DB is small (4 customers, 9 lines, 5 plans, 6 bills, 9 devices), so a
plain deep copy per episode costs microseconds; no copy-on-write is needed.
"""

from __future__ import annotations

import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from areal_env.envs.tau2.toolkit import DB

TODAY = datetime.date(2025, 2, 25)
"""tau2's fixed telecom "today" (``utils.get_today``); "now" is 2025-02-25 12:08."""

DEFAULT_START_DATE = datetime.date(2025, 1, 1)


class _Strict(BaseModel):
    """Base of the nested models: unknown keys are errors (tau2's ``BaseModelNoExtra``)."""

    model_config = ConfigDict(extra="forbid")


# ---- the carrier's DB ------------------------------------------------------------------


class Address(_Strict):
    """A customer's billing address."""

    street: str = Field(description="Street address including house/apartment number")
    city: str = Field(description="City name")
    state: str = Field(description="State or province code (e.g., CA, NY)")
    zip_code: str = Field(description="Postal/ZIP code")


class Plan(_Strict):
    """A service plan: data allowance, price, refuelling price."""

    plan_id: str = Field(description="Unique identifier for the plan")
    name: str = Field(description="Display name of the plan")
    data_limit_gb: float = Field(description="Monthly data allowance in gigabytes (GB)")
    price_per_month: float = Field(description="Monthly price of the plan in USD")
    data_refueling_price_per_gb: float = Field(description="Price per gigabyte for data refueling")


class DeviceType(StrEnum):
    """What kind of device a line's device is."""

    PHONE = "phone"
    ROUTER = "router"
    TABLET = "tablet"
    WATCH = "watch"
    OTHER = "other"


class Device(_Strict):
    """A device registered with the carrier."""

    device_id: str = Field(description="Unique identifier for the device")
    device_type: DeviceType = Field(description="Type/category of the device")
    model: str = Field(description="Model name/number of the device")
    imei: str | None = Field(None, description="International Mobile Equipment Identity number")
    is_esim_capable: bool = Field(description="Whether the device supports eSIM technology")
    activated: bool = Field(False, description="Whether the device is activated on the network")
    activation_date: datetime.datetime | None = Field(
        None, description="When the device was activated (YYYY-MM-DDTHH:MM:SS, EST)"
    )
    last_esim_transfer_date: datetime.datetime | None = Field(
        None, description="Last eSIM profile transfer to this device (YYYY-MM-DDTHH:MM:SS, EST)"
    )


class LineStatus(StrEnum):
    """A line's status (the texts tau2 shows)."""

    ACTIVE = "Active"
    SUSPENDED = "Suspended"
    PENDING_ACTIVATION = "Pending Activation"
    CLOSED = "Closed"


class Line(_Strict):
    """A phone/data line: its plan, usage, roaming and suspension state."""

    line_id: str = Field(description="Unique identifier for the line")
    phone_number: str = Field(description="Phone number associated with the line")
    status: LineStatus = Field(LineStatus.PENDING_ACTIVATION, description="Current line status")
    plan_id: str = Field(description="Plan associated with this line")
    device_id: str | None = Field(None, description="Device associated with this line")
    data_used_gb: float = Field(0.0, description="Data used this billing cycle (GB)")
    data_refueling_gb: float = Field(0.0, description="Data refueled this billing cycle (GB)")
    roaming_enabled: bool = Field(False, description="Whether international roaming is enabled")
    contract_end_date: datetime.date | None = Field(
        None, description="End date of the current contract (YYYY-MM-DD, EST)"
    )
    last_plan_change_date: datetime.date | None = Field(
        None, description="Date of the most recent plan change (YYYY-MM-DD, EST)"
    )
    last_sim_replacement_date: datetime.date | None = Field(
        None, description="Date of the most recent SIM card replacement (YYYY-MM-DD, EST)"
    )
    suspension_start_date: datetime.date | None = Field(
        None, description="Start date of the current suspension (YYYY-MM-DD, EST)"
    )


class LineItem(_Strict):
    """One charge, credit or payment on a bill."""

    description: str = Field(description="Descriptive text for the line item")
    amount: float = Field(description="Amount in USD (positive: charge, negative: credit)")
    date: datetime.date = Field(description="Date the item was applied (YYYY-MM-DD, EST)")
    item_type: str = Field(description="Category (Plan Charge, Overage, Fee, Credit, Payment)")


class BillStatus(StrEnum):
    """A bill's status (the texts tau2 shows)."""

    DRAFT = "Draft"
    ISSUED = "Issued"
    AWAITING_PAYMENT = "Awaiting Payment"
    PAID = "Paid"
    OVERDUE = "Overdue"
    DISPUTED = "Disputed"


class Bill(_Strict):
    """A customer's bill for one period."""

    bill_id: str = Field(description="Unique identifier for the bill")
    customer_id: str = Field(description="ID of the customer this bill belongs to")
    period_start: datetime.date = Field(description="Start of the billing period")
    period_end: datetime.date = Field(description="End of the billing period")
    issue_date: datetime.date = Field(description="Date the bill was issued")
    total_due: float = Field(description="Total amount due in USD")
    due_date: datetime.date = Field(description="Date by which payment is due")
    line_items: list[LineItem] = Field(
        default_factory=list, description="Charges, credits and payments on this bill"
    )
    status: BillStatus = Field(BillStatus.DRAFT, description="Current status of the bill")


class AccountStatus(StrEnum):
    """A customer account's status."""

    ACTIVE = "Active"
    SUSPENDED = "Suspended"
    PENDING_VERIFICATION = "Pending Verification"
    CLOSED = "Closed"


class PaymentMethodType(StrEnum):
    """Kinds of stored payment method."""

    CREDIT_CARD = "Credit Card"
    DEBIT_CARD = "Debit Card"
    PAYPAL = "PayPal"


class PaymentMethod(_Strict):
    """A stored payment method."""

    method_type: PaymentMethodType = Field(description="Type of payment method")
    account_number_last_4: str = Field(description="Last 4 digits of the account number")
    expiration_date: str = Field(description="Expiration date, MM/YYYY")


class Customer(_Strict):
    """A customer: identity, account status, payment methods, lines and bills."""

    customer_id: str = Field(description="Unique identifier for the customer")
    full_name: str = Field(description="Customer's full name")
    date_of_birth: str = Field(description="Date of birth for verification (YYYY-MM-DD)")
    email: str = Field(description="Customer's email address")
    phone_number: str = Field(description="Customer's primary contact phone number")
    address: Address = Field(description="Customer's billing address")
    account_status: AccountStatus = Field(
        AccountStatus.PENDING_VERIFICATION, description="Current status of the account"
    )
    payment_methods: list[PaymentMethod] = Field(
        default_factory=list, description="Stored payment methods"
    )
    line_ids: list[str] = Field(default_factory=list, description="Lines owned by the customer")
    bill_ids: list[str] = Field(default_factory=list, description="Bills of the customer")
    created_at: datetime.datetime = Field(
        # tau2's default is a date in a datetime field; kept so defaults dump alike.
        DEFAULT_START_DATE,
        description="When the account was created (YYYY-MM-DDTHH:MM:SS, EST)",
    )
    last_extension_date: datetime.date | None = Field(
        None, description="Date of the most recent payment extension"
    )
    goodwill_credit_used_this_year: float = Field(
        0.0, description="Goodwill credit used in the current calendar year"
    )


class TelecomDB(DB):
    """The carrier's DB (``db.toml``): lists, as tau2 keeps them (lookups are linear)."""

    plans: list[Plan] = Field(default_factory=list, description="Available service plans")
    customers: list[Customer] = Field(default_factory=list, description="All customers")
    lines: list[Line] = Field(default_factory=list, description="All lines")
    bills: list[Bill] = Field(default_factory=list, description="All bills")
    devices: list[Device] = Field(default_factory=list, description="All devices")


# ---- the user's phone and surroundings -------------------------------------------------


class SimStatus(StrEnum):
    """The SIM card's status."""

    ACTIVE = "active"
    MISSING = "missing"
    LOCKED_PIN = "locked_pin"
    LOCKED_PUK = "locked_puk"


class NetworkTechnology(StrEnum):
    """Cellular technologies."""

    NONE = "none"
    TWO_G = "2G"
    THREE_G = "3G"
    FOUR_G = "4G"
    FIVE_G = "5G"


class NetworkModePreference(StrEnum):
    """The phone's preferred network mode setting."""

    FOUR_G_5G_PREFERRED = "4g_5g_preferred"
    FOUR_G_ONLY = "4g_only"
    THREE_G_ONLY = "3g_only"
    TWO_G_ONLY = "2g_only"


class SignalStrength(StrEnum):
    """Signal bars."""

    NONE = "none"
    POOR = "poor"
    FAIR = "fair"
    GOOD = "good"
    EXCELLENT = "excellent"


class PerformanceLevel(StrEnum):
    """A VPN server's performance."""

    UNKNOWN = "unknown"
    POOR = "poor"
    FAIR = "fair"
    GOOD = "good"
    EXCELLENT = "excellent"


class NetworkStatus(StrEnum):
    """High-level cellular connection status."""

    CONNECTED = "connected"
    SEARCHING = "searching"
    NO_SERVICE = "no_service"
    EMERGENCY_ONLY = "emergency_only"


class APNNames(StrEnum):
    """APN names: the working one, and the one a broken-APN task installs."""

    INTERNET = "internet"
    BROKEN = "broken"


class APNSettings(_Strict):
    """The active Access Point Name configuration (mobile data and MMS)."""

    apn_name: APNNames = Field(APNNames.INTERNET, description="The APN's name.")
    reset_at_reboot: bool = Field(False, description="Whether the APN resets at the next reboot.")
    mms_apn: str | None = Field("mms", description="APN used for MMS traffic.")
    mmsc_url: str | None = Field(
        "http://mms.carrier.com/mms/wapenc", description="The MMS Center URL (needed for MMS)."
    )
    mms_proxy: str | None = Field(None, description="MMS proxy server address, if any.")
    mms_port: int | None = Field(None, description="MMS proxy server port, if any.")


class VpnDetails(_Strict):
    """The connected VPN's details."""

    server_address: str | None = Field(None, description="Address of the VPN server.")
    protocol: str | None = Field(None, description="VPN protocol (e.g., WireGuard, OpenVPN).")
    server_performance: PerformanceLevel = Field(
        PerformanceLevel.UNKNOWN, description="Estimated performance of the VPN connection."
    )


class AppPermissions(_Strict):
    """The permissions an app holds (only the ones the tasks use)."""

    sms: bool = Field(False, description="Permission to send/read SMS/MMS.")
    storage: bool = Field(False, description="Permission to access device storage.")
    phone: bool = Field(False, description="Permission to make/manage phone calls.")
    network: bool = Field(False, description="Permission to access the network.")


class AppStatus(_Strict):
    """An installed app and its permissions."""

    app_name: str
    permissions: AppPermissions = Field(default_factory=AppPermissions)


def _default_apps() -> dict[str, AppStatus]:
    return {
        "messaging": AppStatus(
            app_name="messaging",
            permissions=AppPermissions(sms=True, storage=True, phone=True),
        ),
        "browser": AppStatus(
            app_name="browser", permissions=AppPermissions(network=True, storage=True)
        ),
    }


class PhoneDevice(_Strict):
    """The user's phone (tau2's ``MockPhoneAttributes``)."""

    sim_card_status: SimStatus = SimStatus.ACTIVE
    sim_card_missing: bool = False
    airplane_mode: bool = False
    network_signal_strength: SignalStrength = SignalStrength.GOOD
    network_technology_connected: NetworkTechnology = NetworkTechnology.FIVE_G
    network_connection_status: NetworkStatus = NetworkStatus.CONNECTED
    battery_level: int = 80
    data_enabled: bool = True
    roaming_enabled: bool = False
    network_mode_preference: NetworkModePreference = NetworkModePreference.FOUR_G_5G_PREFERRED
    active_apn_settings: APNSettings = Field(default_factory=APNSettings)
    wifi_enabled: bool = False
    wifi_connected: bool = False
    wifi_ssid: str | None = None
    wifi_signal_strength: SignalStrength = SignalStrength.NONE
    wifi_calling_enabled: bool = False
    wifi_calling_mms_over_wifi: bool = False
    data_saver_mode: bool = False
    vpn_enabled_setting: bool = False
    vpn_connected: bool = False
    vpn_details: VpnDetails | None = None
    app_statuses: dict[str, AppStatus] = Field(default_factory=_default_apps)


class PaymentRequest(_Strict):
    """A payment the agent asked for (``send_payment_request``), pending on the phone."""

    bill_id: str = Field(description="The ID of the bill.")
    amount_due: float = Field(description="The amount of the payment in USD.")
    paid: bool = Field(False, description="Whether the payment has been made.")


def _default_signal() -> dict[NetworkTechnology, SignalStrength]:
    return {
        NetworkTechnology.TWO_G: SignalStrength.POOR,
        NetworkTechnology.THREE_G: SignalStrength.FAIR,
        NetworkTechnology.FOUR_G: SignalStrength.GOOD,
        NetworkTechnology.FIVE_G: SignalStrength.EXCELLENT,
    }


class UserSurroundings(_Strict):
    """Where the user is and what the network grants them (kept in sync with the agent DB)."""

    name: str | None = Field(None, description="The name of the user.")
    phone_number: str | None = Field(None, description="The phone number of the user.")
    is_abroad: bool = Field(False, description="Whether the user is currently abroad.")
    roaming_allowed: bool = Field(False, description="Whether the line may roam (agent DB).")
    signal_strength: dict[NetworkTechnology, SignalStrength] = Field(
        default_factory=_default_signal, description="Signal strength per technology here."
    )
    mobile_data_usage_exceeded: bool = Field(
        False, description="Whether the line has used up its data (agent DB)."
    )
    line_active: bool = Field(True, description="Whether the line is active (agent DB).")
    payment_request: PaymentRequest | None = Field(
        None, description="The payment that the agent has requested."
    )


class TelecomUserDB(DB):
    """The user side's DB (``user_db.toml``): the phone and its surroundings."""

    device: PhoneDevice = Field(default_factory=PhoneDevice)
    surroundings: UserSurroundings = Field(default_factory=UserSurroundings)
