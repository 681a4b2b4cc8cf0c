"""tau2's airline domain: flight bookings for a fictional airline (issue 9).

The DB models are in ``airline_models.py`` and the 14 agent tools in
``airline_tools.py``; this module ties them into the :class:`Domain` that
``DOMAINS`` names. Airline has no user-side tools or DB, and its tasks set no
initial state: each episode starts from ``db.json`` as is, "now" being
2024-05-15 15:00 EST (the policy's, and ``airline_tools.NOW``).
"""

from __future__ import annotations

from areal_env.envs.tau2.domain import Domain
from areal_env.envs.tau2.domains.airline.airline_models import FlightDB
from areal_env.envs.tau2.domains.airline.airline_tools import AirlineTools

DOMAIN = Domain(name="airline", db_type=FlightDB, db_file="db.json", tools=AirlineTools)
"""The airline domain, as ``DOMAINS`` in ``envs/tau2/domain.py`` names it."""
