"""tau2 telecom user tools: the simulated phone the user operates on the agent's advice.

Semantics and the exact texts follow upstream ``src/tau2/domains/telecom/user_tools.py``
(read, not copied): the 30 device tools (``check_*``, ``toggle_*``, ``set_*``,
``reset_apn_settings``, ``reboot_device``, ``make_payment`` ...), the network search
every radio change triggers, the speed test, the MMS check; the non-tool setup
functions tasks call in ``initialization_actions`` (``set_user_info``,
``turn_roaming_off``, ``break_apn_settings`` ...) and the ``assert_*`` functions of
``env_assertions``.

What the carrier decides (line active, roaming allowed, data used up, a payment
request) lives in ``db.surroundings`` and is written by the domain's sync from the
agent DB (``telecom_domain.py``), so the phone reacts to the agent's actions.

One difference on purpose: tau2's ``break_vpn`` mutates its class-wide default VPN
details, so once one episode broke a VPN every later ``connect_vpn`` in the process
gets a poor server; each connection here gets its own copy of the defaults.
"""

from __future__ import annotations

from typing import Literal

from areal_env.envs.tau2.domains.telecom.telecom_models import (
    APNNames,
    APNSettings,
    NetworkModePreference,
    NetworkStatus,
    NetworkTechnology,
    PerformanceLevel,
    PhoneDevice,
    SignalStrength,
    SimStatus,
    TelecomUserDB,
    UserSurroundings,
    VpnDetails,
)
from areal_env.envs.tau2.toolkit import Toolkit, ToolType, is_tool

_SIGNAL_ICONS = {
    SignalStrength.NONE: "📵 No Signal",
    SignalStrength.POOR: "📶¹ Poor",
    SignalStrength.FAIR: "📶² Fair",
    SignalStrength.GOOD: "📶³ Good",
    SignalStrength.EXCELLENT: "📶⁴ Excellent",
}
_TECH_SPEED = {
    NetworkTechnology.TWO_G: (0.1, 0.4),
    NetworkTechnology.THREE_G: (1.0, 5.0),
    NetworkTechnology.FOUR_G: (10.0, 100.0),
    NetworkTechnology.FIVE_G: (50.0, 500.0),
    NetworkTechnology.NONE: (0.0, 0.0),
}
_SIGNAL_FACTOR = {
    SignalStrength.POOR: 0.2,
    SignalStrength.FAIR: 0.5,
    SignalStrength.GOOD: 0.8,
    SignalStrength.EXCELLENT: 1.0,
    SignalStrength.NONE: 0.0,
}
_SPEED_ADVICE = {
    "Very Poor": "Connection is very slow. Basic web browsing might be difficult.",
    "Poor": "Connection is slow. Web browsing may be sluggish, streaming difficult.",
    "Fair": "Connection is okay for web browsing and some standard definition streaming.",
    "Good": "Connection is good for most activities, including HD streaming.",
    "Excellent": "Connection is very fast.",
}
_MODE_TECH = {
    NetworkModePreference.FOUR_G_ONLY: NetworkTechnology.FOUR_G,
    NetworkModePreference.THREE_G_ONLY: NetworkTechnology.THREE_G,
    NetworkModePreference.TWO_G_ONLY: NetworkTechnology.TWO_G,
}


def _default_vpn() -> VpnDetails:
    return VpnDetails(
        server_address="192.168.1.1",
        protocol="OpenVPN",
        server_performance=PerformanceLevel.EXCELLENT,
    )


class TelecomUserTools(Toolkit[TelecomUserDB]):
    """The user's phone (see the module docstring)."""

    @property
    def device(self) -> PhoneDevice:
        """The phone's state."""
        return self.db.device

    @property
    def surroundings(self) -> UserSurroundings:
        """The user's location and what the carrier grants them."""
        return self.db.surroundings

    # ---- status bar and network --------------------------------------------------------

    @is_tool(ToolType.READ)
    def check_status_bar(self) -> str:
        """Show the icons in your phone's status bar (top of the screen).

        Shows signal strength, mobile data status (enabled, disabled, data saver),
        Wi-Fi status and battery level.
        """
        return f"Status Bar: {self._status_bar()}"

    @is_tool(ToolType.READ)
    def check_network_status(self) -> str:
        """Check your phone's connection to cellular networks and Wi-Fi.

        Shows airplane mode, signal strength, network type, whether mobile data is
        enabled and whether data roaming is enabled.
        """
        d = self.device
        lines = [
            f"Airplane Mode: {'ON' if d.airplane_mode else 'OFF'}",
            f"SIM Card Status: {self._sim_status().value}",
            f"Cellular Connection: {d.network_connection_status.value}",
            f"Cellular Signal: {d.network_signal_strength.value}",
            f"Cellular Network Type: {d.network_technology_connected.value}",
            f"Mobile Data Enabled: {'Yes' if d.data_enabled else 'No'}",
            f"Data Roaming Enabled: {'Yes' if d.roaming_enabled else 'No'}",
            f"Wi-Fi Radio: {'ON' if d.wifi_enabled else 'OFF'}",
            f"Wi-Fi Connected: {'Yes' if d.wifi_connected else 'No'}",
        ]
        if d.wifi_connected:
            lines.append(f"Connected Wi-Fi Network: {d.wifi_ssid}")
        return "\n".join(lines)

    @is_tool(ToolType.READ)
    def check_network_mode_preference(self) -> str:
        """Show the current network mode preference."""
        return f"Network Mode Preference: {self.device.network_mode_preference.value}"

    @is_tool(ToolType.WRITE)
    def set_network_mode_preference(self, mode: str) -> str:
        """Change the cellular network type your phone prefers (e.g., 5G, LTE/4G, 3G).

        Faster networks (LTE/5G) give faster data but may use more battery.

        Args:
            mode: One of 4g_5g_preferred, 4g_only, 3g_only, 2g_only.
        """
        try:
            chosen = NetworkModePreference(mode)
        except ValueError:
            options = ", ".join(m.value for m in NetworkModePreference)
            return (
                f"Failed to set network mode: '{mode}' is not a valid option. "
                f"Please use one of: {options}\nStatus Bar: {self._status_bar()}"
            )
        self.device.network_mode_preference = chosen
        self.simulate_network_search()
        return f"Preferred Network Mode set to: {chosen.value}\nStatus Bar: {self._status_bar()}"

    @is_tool(ToolType.READ)
    def run_speed_test(self) -> str:
        """Measure your current internet (download) speed and what it is good for."""
        speed, desc = self._speed_test()
        if speed is None:
            return f"Speed test failed: {desc or 'Could not determine speed'}."
        advice = _SPEED_ADVICE.get(desc or "", "")
        return f"Speed Test Result: {speed:.2f} Mbps ({desc}). {advice}"

    # ---- airplane mode -----------------------------------------------------------------

    @is_tool(ToolType.WRITE)
    def toggle_airplane_mode(self) -> str:
        """Toggle Airplane Mode ON or OFF; ON cuts all radios (cellular, Wi-Fi, Bluetooth)."""
        on = self._toggle_airplane_mode()
        return f"Airplane Mode is now {'ON' if on else 'OFF'}.\nStatus Bar: {self._status_bar()}"

    # ---- SIM ---------------------------------------------------------------------------

    @is_tool(ToolType.READ)
    def check_sim_status(self) -> str:
        """Check whether your SIM card works: active, missing, or locked (PIN or PUK)."""
        return {
            SimStatus.ACTIVE: "Your SIM card is active and working.",
            SimStatus.MISSING: "No SIM card detected in the phone.",
            SimStatus.LOCKED_PIN: "The SIM card is locked with a PIN code.",
            SimStatus.LOCKED_PUK: "The SIM card is locked with a PUK code.",
        }[self._sim_status()]

    @is_tool(ToolType.WRITE)
    def reseat_sim_card(self) -> str:
        """Remove and re-insert your SIM card; this can fix recognition issues."""
        self.device.sim_card_missing = False
        self.simulate_network_search()
        return f"SIM card re-seated successfully.\nStatus Bar: {self._status_bar()}"

    # ---- mobile data, roaming, data saver ----------------------------------------------

    @is_tool(ToolType.WRITE)
    def toggle_data(self) -> str:
        """Toggle mobile data ON or OFF (cellular internet when Wi-Fi is unavailable)."""
        on = self._toggle_data()
        return f"Mobile Data is now {'ON' if on else 'OFF'}.\nStatus Bar: {self._status_bar()}"

    @is_tool(ToolType.WRITE)
    def toggle_roaming(self) -> str:
        """Toggle Data Roaming ON or OFF (data outside your carrier's coverage area)."""
        on = self._toggle_roaming()
        return f"Data Roaming is now {'ON' if on else 'OFF'}.\nStatus Bar: {self._status_bar()}"

    @is_tool(ToolType.READ)
    def check_data_restriction_status(self) -> str:
        """Check for data-limiting features: whether Data Saver mode is on."""
        if self.device.data_saver_mode:
            return "Data Saver mode is ON (limits data usage)."
        return "Data Saver mode is OFF."

    @is_tool(ToolType.WRITE)
    def toggle_data_saver_mode(self) -> str:
        """Toggle Data Saver mode ON or OFF; ON reduces data use and may slow data."""
        self.device.data_saver_mode = not self.device.data_saver_mode
        on = self.device.data_saver_mode
        return f"Data Saver Mode is now {'ON' if on else 'OFF'}.\nStatus Bar: {self._status_bar()}"

    # ---- APN ---------------------------------------------------------------------------

    @is_tool(ToolType.READ)
    def check_apn_settings(self) -> str:
        """Check the APN settings used for mobile data, and the MMSC URL for MMS."""
        apn = self.device.active_apn_settings
        return (
            f"Current APN Name: {apn.apn_name.value or 'Not Set'}\n"
            f"MMSC URL (for picture messages): {apn.mmsc_url or 'Not Set'}\n"
            "(These are technical settings, usually best left unchanged.)"
        )

    @is_tool(ToolType.WRITE)
    def set_apn_settings(self, apn_settings: APNSettings) -> str:
        """Set the phone's APN settings.

        Args:
            apn_settings: The new APN settings.
        """
        self.device.active_apn_settings = apn_settings.model_copy(deep=True)
        self.simulate_network_search()
        return (
            f"APN settings set to: {apn_settings.apn_name.value}\nStatus Bar: {self._status_bar()}"
        )

    @is_tool(ToolType.WRITE)
    def reset_apn_settings(self) -> str:
        """Reset your APN settings to the defaults (applied at the next reboot)."""
        self.device.active_apn_settings.reset_at_reboot = True
        self.simulate_network_search()
        return f"APN settings will reset at reboot.\nStatus Bar: {self._status_bar()}"

    # ---- Wi-Fi and Wi-Fi calling -------------------------------------------------------

    @is_tool(ToolType.READ)
    def check_wifi_status(self) -> str:
        """Check Wi-Fi: whether it is on, which network it is connected to, signal strength."""
        d = self.device
        if not d.wifi_enabled:
            return "Wi-Fi is turned OFF."
        if d.wifi_connected:
            return (
                f"Wi-Fi is ON and connected to '{d.wifi_ssid}'. "
                f"Signal strength: {d.wifi_signal_strength.value}."
            )
        return "Wi-Fi is ON but not connected to any network."

    @is_tool(ToolType.WRITE)
    def toggle_wifi(self) -> str:
        """Toggle the Wi-Fi radio ON or OFF."""
        d = self.device
        if d.airplane_mode:
            return (
                "Cannot change Wi-Fi settings while Airplane Mode is ON.\n"
                f"Status Bar: {self._status_bar()}"
            )
        d.wifi_enabled = not d.wifi_enabled
        if not d.wifi_enabled:
            self._drop_wifi()
        return (
            f"Wi-Fi is now {'ON' if d.wifi_enabled else 'OFF'}.\nStatus Bar: {self._status_bar()}"
        )

    @is_tool(ToolType.READ)
    def check_wifi_calling_status(self) -> str:
        """Check whether Wi-Fi Calling (calls over Wi-Fi instead of cellular) is on."""
        on = self.device.wifi_calling_enabled
        return f"Wi-Fi Calling is currently turned {'ON' if on else 'OFF'}."

    @is_tool(ToolType.WRITE)
    def toggle_wifi_calling(self) -> str:
        """Toggle Wi-Fi Calling ON or OFF (helps where cellular signal is weak)."""
        self.device.wifi_calling_enabled = not self.device.wifi_calling_enabled
        on = self.device.wifi_calling_enabled
        return f"Wi-Fi Calling is now {'ON' if on else 'OFF'}.\nStatus Bar: {self._status_bar()}"

    # ---- VPN ---------------------------------------------------------------------------

    @is_tool(ToolType.READ)
    def check_vpn_status(self) -> str:
        """Check whether a VPN is on and connected, with its connection details."""
        d = self.device
        if d.vpn_connected:
            if d.vpn_details is not None:
                return f"VPN is ON and connected. Details: {d.vpn_details.model_dump()}"
            return "VPN is ON and connected (no specific details available)."
        if d.vpn_enabled_setting:
            return "VPN is turned ON in settings, but currently not connected."
        return "VPN is turned OFF."

    @is_tool(ToolType.WRITE)
    def connect_vpn(self) -> str:
        """Connect to your VPN (Virtual Private Network)."""
        if self.device.vpn_connected:
            return "VPN already connected."
        self.device.vpn_connected = True
        self.device.vpn_details = _default_vpn()
        return f"VPN connected successfully.\nStatus Bar: {self._status_bar()}"

    @is_tool(ToolType.WRITE)
    def disconnect_vpn(self) -> str:
        """Disconnect any active VPN; traffic stops going through the VPN server."""
        done = self._disconnect_vpn()
        text = (
            "VPN disconnected successfully." if done else "No active VPN connection to disconnect."
        )
        return f"{text}\nStatus Bar: {self._status_bar()}"

    # ---- apps --------------------------------------------------------------------------

    @is_tool(ToolType.READ)
    def check_installed_apps(self) -> str:
        """List the names of the apps installed on the phone."""
        names = ", ".join(self.device.app_statuses)
        return f"The following apps are installed on the phone: {names}"

    @is_tool(ToolType.READ)
    def check_app_status(self, app_name: str) -> str:
        """Show an app's details: the permissions it has.

        Args:
            app_name: The name of the app.
        """
        app = self.device.app_statuses.get(app_name)
        if app is None:
            return f"App '{app_name}' not found on this phone."
        lines = [f"Status for App: {app_name}"]
        granted = self._granted(app_name)
        if not granted:
            lines.append(" - Permissions: None granted.")
        else:
            lines.append(" - Permissions Granted:")
            lines.extend(f"   - {p}" for p in granted)
        return "\n".join(lines)

    @is_tool(ToolType.READ)
    def check_app_permissions(self, app_name: str) -> str:
        """Check which permissions (storage, sms, phone, network ...) an app has.

        Args:
            app_name: The name of the app.
        """
        if app_name not in self.device.app_statuses:
            return f"App '{app_name}' not found on this phone."
        granted = self._granted(app_name)
        if not granted:
            return f"App '{app_name}' currently has no permissions granted."
        return f"App '{app_name}' has permission for: {', '.join(granted)}."

    @is_tool(ToolType.WRITE)
    def grant_app_permission(self, app_name: str, permission: str) -> str:
        """Give an app a permission (like storage or sms); some app functions need one.

        Args:
            app_name: The name of the app to grant the permission to.
            permission: The permission to grant, should be lowercase.
        """
        app = self.device.app_statuses.get(app_name)
        permission = permission.lower()
        if app is None:
            ok, text = False, f"App '{app_name}' not found. Cannot grant permission."
        elif permission not in type(app.permissions).model_fields:
            available = list(app.permissions.model_dump())
            ok, text = (
                False,
                f"Permission '{permission}' not tracked for app '{app_name}', "
                f"available permissions: {available}",
            )
        else:
            setattr(app.permissions, permission, True)
            ok, text = True, f"Permission '{permission}' granted to app '{app_name}'."
        return f"{'Success. ' if ok else 'Error. '}{text}\nStatus Bar: {self._status_bar()}"

    # ---- MMS, reboot, payment ----------------------------------------------------------

    @is_tool(ToolType.READ)
    def can_send_mms(self) -> str:
        """Check whether the messaging app can send MMS (picture) messages."""
        if self._can_send_mms():
            return "Your messaging app can send MMS messages."
        return "Your messaging app cannot send MMS messages."

    @is_tool(ToolType.WRITE)
    def reboot_device(self) -> str:
        """Restart your phone; refreshes all services and connections (fixes many glitches)."""
        lines = []
        if self.device.active_apn_settings.reset_at_reboot:
            lines.append("Resetting APN settings...")
            self.device.active_apn_settings = APNSettings()
        lines.append("Restarting network services...")
        self.device.network_connection_status = NetworkStatus.SEARCHING
        self.simulate_network_search()
        return "\n".join(lines) + f"\nStatus Bar: {self._status_bar()}"

    @is_tool(ToolType.READ)
    def check_payment_request(self) -> str:
        """Check whether the agent has sent you a payment request."""
        request = self.surroundings.payment_request
        if request is None:
            return "No payment request has been made."
        return f"You have a payment request for bill {request.bill_id} of {request.amount_due} USD."

    @is_tool(ToolType.WRITE)
    def make_payment(self) -> str:
        """Pay the bill the agent has sent you a payment request for."""
        request = self.surroundings.payment_request
        if request is None:
            return "You do not have a payment request."
        request.paid = True
        return f"Payment of {request.amount_due} USD has been made for bill {request.bill_id}."

    # ---- task setup (initialization actions) -------------------------------------------

    def set_user_info(self, name: str, phone_number: str) -> None:
        """Name the user and their phone number (the sync finds their line by it)."""
        self.surroundings.name = name
        self.surroundings.phone_number = phone_number

    def set_user_location(self, abroad: bool) -> None:
        """Put the user abroad (roaming matters) or at home."""
        self.surroundings.is_abroad = abroad

    def turn_airplane_mode_on(self) -> str:
        """Airplane Mode ON, whatever it was."""
        if not self._toggle_airplane_mode():
            self._toggle_airplane_mode()
        return "Airplane Mode is now ON."

    def turn_airplane_mode_off(self) -> str:
        """Airplane Mode OFF, whatever it was."""
        if self._toggle_airplane_mode():
            self._toggle_airplane_mode()
        return "Airplane Mode is now OFF."

    def unseat_sim_card(self) -> str:
        """Take the SIM out (``reseat_sim_card`` fixes it)."""
        self.device.sim_card_missing = True
        self.simulate_network_search()
        return "SIM card un-seated successfully."

    def lock_sim_card(self, mode: Literal["pin", "puk"]) -> str:
        """Lock the SIM with a PIN or PUK (no tool fixes it: the agent must transfer)."""
        if mode == "pin":
            self.device.sim_card_status = SimStatus.LOCKED_PIN
        elif mode == "puk":
            self.device.sim_card_status = SimStatus.LOCKED_PUK
        self.simulate_network_search()
        return f"SIM card locked successfully in {mode} mode."

    def turn_data_on(self) -> str:
        """Mobile data ON (tau2 sets the switch without a network search)."""
        self.device.data_enabled = True
        return "Data connection restored."

    def turn_data_off(self) -> str:
        """Mobile data OFF, whatever it was."""
        if self._toggle_data():
            self._toggle_data()
        return "Data connection broken."

    def turn_roaming_on(self) -> str:
        """Data roaming ON, whatever it was."""
        if not self._toggle_roaming():
            self._toggle_roaming()
        return "Data Roaming is now ON."

    def turn_roaming_off(self) -> str:
        """Data roaming OFF, whatever it was."""
        if self._toggle_roaming():
            self._toggle_roaming()
        return "Data Roaming is now OFF."

    def turn_data_saver_mode_on(self) -> str:
        """Data Saver ON."""
        self.device.data_saver_mode = True
        return "Data Saver Mode is now ON."

    def turn_data_saver_mode_off(self) -> str:
        """Data Saver OFF."""
        self.device.data_saver_mode = False
        return "Data Saver Mode is now OFF."

    def break_apn_settings(self) -> str:
        """Install a broken APN: no service until the APN is reset and the phone rebooted."""
        self.device.active_apn_settings.apn_name = APNNames.BROKEN
        self.simulate_network_search()
        return "APN settings broken. Please call reset_apn_settings() to fix."

    def break_apn_mms_setting(self) -> str:
        """Clear the MMSC URL: no MMS until the APN is reset and the phone rebooted."""
        self.device.active_apn_settings.mmsc_url = None
        return "APN MMS setting broken. Please call reset_apn_settings() to fix."

    def set_wifi_calling(self, enabled: bool, mms_over_wifi: bool | None = None) -> str:
        """Set Wi-Fi Calling, and MMS over Wi-Fi when given (which blocks MMS here)."""
        self.device.wifi_calling_enabled = enabled
        text = f"Wi-Fi Calling is now {'ON' if enabled else 'OFF'}."
        if mms_over_wifi is not None:
            self.device.wifi_calling_mms_over_wifi = mms_over_wifi
            text += f"\nMMS over Wi-Fi is now {'ON' if mms_over_wifi else 'OFF'}."
        return text

    def break_vpn(self) -> str:
        """Connect a VPN whose server is poor: mobile data gets slow until it disconnects."""
        self.connect_vpn()
        assert self.device.vpn_details is not None
        self.device.vpn_details.server_performance = PerformanceLevel.POOR
        return "VPN connection broken."

    def remove_app_permission(self, app_name: str, permission: str) -> tuple[bool, str]:
        """Take a permission from an app (``grant_app_permission`` fixes it)."""
        app = self.device.app_statuses.get(app_name)
        permission = permission.lower()
        if app is None:
            return False, f"App '{app_name}' not found. Cannot remove permission."
        if permission not in type(app.permissions).model_fields:
            return False, f"Permission '{permission}' not tracked for app '{app_name}'."
        setattr(app.permissions, permission, False)
        return True, f"Permission '{permission}' removed from app '{app_name}'."

    def simulate_network_search(self) -> None:
        """Re-evaluate the cellular connection from the SIM, mode, location and line.

        Every radio change calls it; tasks also call it after their setup.
        """
        d, s = self.device, self.surroundings
        if self._sim_status() == SimStatus.ACTIVE:
            d.network_connection_status = NetworkStatus.CONNECTED
            pref = d.network_mode_preference
            tech = _MODE_TECH.get(pref, NetworkTechnology.FOUR_G)
            if pref == NetworkModePreference.FOUR_G_5G_PREFERRED:
                five_g = s.signal_strength.get(NetworkTechnology.FIVE_G, SignalStrength.NONE)
                if five_g != SignalStrength.NONE:
                    tech = NetworkTechnology.FIVE_G
            d.network_technology_connected = tech
            d.network_signal_strength = s.signal_strength.get(tech, SignalStrength.NONE)
        else:
            self._no_service()
        if (
            d.airplane_mode
            or d.active_apn_settings.apn_name == APNNames.BROKEN
            or not s.line_active
        ):
            self._no_service()

    # ---- env assertions ----------------------------------------------------------------

    def assert_airplane_mode_status(self, expected_status: bool) -> bool:
        """Whether Airplane Mode is ``expected_status``."""
        return self.device.airplane_mode == expected_status

    def assert_service_status(self, expected_status: str) -> bool:
        """Whether the cellular connection status is ``expected_status``."""
        return self.device.network_connection_status == NetworkStatus(expected_status)

    def assert_mobile_data_status(self, expected_status: bool) -> bool:
        """Whether mobile data working is ``expected_status``."""
        return self._data_working() == expected_status

    def assert_mobile_roaming_status(self, expected_status: bool) -> bool:
        """Whether the phone's data roaming switch is ``expected_status``."""
        return self.device.roaming_enabled == expected_status

    def assert_mobile_data_saver_mode_status(self, expected_status: bool) -> bool:
        """Whether Data Saver is ``expected_status``."""
        return self.device.data_saver_mode == expected_status

    def assert_internet_speed(
        self, expected_speed: float, expected_desc: str | None = None
    ) -> bool:
        """Whether the speed test reaches ``expected_speed`` (and says ``expected_desc``)."""
        speed, desc = self._speed_test()
        ok = (speed or 0.0) >= expected_speed
        if expected_desc is None:
            return ok
        return ok and (desc or "").lower() == expected_desc.lower()

    def assert_internet_not_excellent(self) -> bool:
        """Whether the speed test says anything but excellent."""
        _, desc = self._speed_test()
        return (desc or "").lower() != "excellent"

    def assert_can_send_mms(self, expected_status: bool) -> bool:
        """Whether being able to send MMS is ``expected_status``."""
        return self._can_send_mms() == expected_status

    def assert_mobile_data_usage_exceeded(self, expected_status: bool) -> bool:
        """Whether the line's data being used up is ``expected_status``."""
        return self.surroundings.mobile_data_usage_exceeded == expected_status

    # ---- simulation --------------------------------------------------------------------

    def _sim_status(self) -> SimStatus:
        if self.device.sim_card_missing:
            return SimStatus.MISSING
        return self.device.sim_card_status

    def _no_service(self) -> None:
        d = self.device
        d.network_connection_status = NetworkStatus.NO_SERVICE
        d.network_technology_connected = NetworkTechnology.NONE
        d.network_signal_strength = SignalStrength.NONE

    def _drop_wifi(self) -> None:
        d = self.device
        d.wifi_connected = False
        d.wifi_ssid = None
        d.wifi_signal_strength = SignalStrength.NONE

    def _disconnect_vpn(self) -> bool:
        if not self.device.vpn_connected:
            return False
        self.device.vpn_connected = False
        self.device.vpn_details = None
        return True

    def _toggle_airplane_mode(self) -> bool:
        d = self.device
        was_on = d.airplane_mode
        d.airplane_mode = not was_on
        if was_on:
            d.network_connection_status = NetworkStatus.SEARCHING
            if d.wifi_enabled:
                self._drop_wifi()
        else:
            self._drop_wifi()
            self._disconnect_vpn()
        self.simulate_network_search()
        return d.airplane_mode

    def _toggle_data(self) -> bool:
        self.device.data_enabled = not self.device.data_enabled
        self.simulate_network_search()
        return self.device.data_enabled

    def _toggle_roaming(self) -> bool:
        self.device.roaming_enabled = not self.device.roaming_enabled
        self.simulate_network_search()
        return self.device.roaming_enabled

    def _granted(self, app_name: str) -> list[str]:
        perms = self.device.app_statuses[app_name].permissions.model_dump()
        return [name.replace("_", " ").lower() for name, on in perms.items() if on]

    def _data_working(self) -> bool:
        """Mobile data works: radio on, service, roaming allowed when abroad, data left."""
        d, s = self.device, self.surroundings
        if d.airplane_mode or d.network_signal_strength == SignalStrength.NONE:
            return False
        if d.network_connection_status == NetworkStatus.NO_SERVICE:
            return False
        if s.is_abroad and (not d.roaming_enabled or not s.roaming_allowed):
            return False
        return d.data_enabled and not s.mobile_data_usage_exceeded

    def _speed_test(self) -> tuple[float | None, str | None]:
        """(Mbps, description): the technology's mid speed x signal x VPN/data-saver factors."""
        if not self._data_working():
            return None, "No Connection"
        d = self.device
        factor = 1.0
        if (
            d.vpn_connected
            and d.vpn_details is not None
            and d.vpn_details.server_performance == PerformanceLevel.POOR
        ):
            factor = 0.1
        if d.data_saver_mode:
            factor *= 0.2
        low, high = _TECH_SPEED.get(d.network_technology_connected, (0.0, 0.0))
        signal = _SIGNAL_FACTOR.get(d.network_signal_strength, 0.0)
        speed = round((low + high) / 2.0 * signal * factor, 2)
        if speed < 1:
            desc = "Very Poor"
        elif speed < 5:
            desc = "Poor"
        elif speed < 25:
            desc = "Fair"
        elif speed < 100:
            desc = "Good"
        else:
            desc = "Excellent"
        return speed, desc

    def _can_send_mms(self) -> bool:
        """MMS needs working mobile data on 3G+, no MMS-over-Wi-Fi, an MMSC URL, sms+storage."""
        d = self.device
        if not self._data_working():
            return False
        if d.network_technology_connected == NetworkTechnology.TWO_G:
            return False
        if d.wifi_calling_enabled and d.wifi_calling_mms_over_wifi:
            return False
        if d.active_apn_settings.mmsc_url is None:
            return False
        app = d.app_statuses.get("messaging")
        return app is not None and app.permissions.storage and app.permissions.sms

    def _status_bar(self) -> str:
        d = self.device
        parts = []
        if d.airplane_mode:
            parts.append("✈️ Airplane Mode")
        else:
            parts.append(_SIGNAL_ICONS.get(d.network_signal_strength, "📵 No Signal"))
            if d.network_technology_connected != NetworkTechnology.NONE:
                parts.append(d.network_technology_connected.value)
            if d.data_enabled and d.network_technology_connected != NetworkTechnology.NONE:
                parts.append("📱 Data Enabled")
                if d.data_saver_mode:
                    parts.append("🔽 Data Saver")
            else:
                parts.append("📵 Data Disabled")
        if d.wifi_enabled and d.wifi_connected:
            parts.append(f"📡 Connected to {d.wifi_ssid}" if d.wifi_ssid else "📡 Enabled")
        if d.vpn_connected:
            parts.append("🔒 VPN Connected")
        parts.append(f"🔋 {d.battery_level}%")
        return " | ".join(parts)
