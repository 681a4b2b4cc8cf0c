"""tau2's airline database as pydantic models (``FlightDB``), loaded from ``db.json``.

Field names and types follow upstream ``src/tau2/domains/airline/data_model.py``
(read, not copied), because the DB reward hashes ``model_dump()``: a field typed
differently (a payment ``amount`` as float instead of int, a dropped optional
``status``) would change the hash text, so the shapes are kept exactly. The
per-date flight states and the payment methods are unions told apart by their
``status`` / ``source`` literal; a pydantic discriminator picks the member in one
step, which keeps loading the 7 MB file quick, and dumps the same data.

Copies are copy-on-write (see :class:`FlightDB`): every episode and every reward
replays on a fresh copy of the 7 MB DB, and a plain deep copy plus two hashes cost
about half a second of CPU per episode; sharing the untouched entities makes a
copy and a hash take milliseconds, with the same hash text.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, PrivateAttr

from areal_env.envs.tau2.toolkit import DB

FlightType = Literal["round_trip", "one_way"]
CabinClass = Literal["business", "economy", "basic_economy"]
Insurance = Literal["yes", "no"]
MembershipLevel = Literal["gold", "silver", "regular"]


class AirportCode(BaseModel):
    """An airport: its IATA code and city (``list_all_airports``)."""

    iata: str = Field(description="IATA code")
    city: str = Field(description="City name")


class Name(BaseModel):
    """A user's name."""

    first_name: str = Field(description="The person's first name")
    last_name: str = Field(description="The person's last name")


class Address(BaseModel):
    """A user's postal address."""

    address1: str = Field(description="Primary address line")
    address2: str | None = Field(None, description="Secondary address line (optional)")
    city: str = Field(description="City name")
    country: str = Field(description="Country name")
    state: str = Field(description="State or province name")
    zip: str = Field(description="Postal code")


class Payment(BaseModel):
    """One payment (or refund, negative) of a reservation; also a booking's payment split."""

    payment_id: str = Field(description="Unique identifier for the payment")
    amount: int = Field(description="Payment amount in dollars")


class CreditCard(BaseModel):
    """A saved credit card (no balance: always accepted)."""

    source: Literal["credit_card"] = Field(
        description="Indicates this is a credit card payment method"
    )
    id: str = Field(description="Unique identifier for the payment method")
    brand: str = Field(description="Credit card brand (e.g., visa, mastercard)")
    last_four: str = Field(description="Last four digits of the credit card")


class GiftCard(BaseModel):
    """A gift card with a balance that payments draw down."""

    source: Literal["gift_card"] = Field(description="Indicates this is a gift card payment method")
    id: str = Field(description="Unique identifier for the gift card")
    amount: float = Field(description="Gift card value amount")


class Certificate(BaseModel):
    """A travel certificate: single use, removed from the profile when used to book."""

    source: Literal["certificate"] = Field(
        description="Indicates this is a certificate payment method"
    )
    id: str = Field(description="Unique identifier for the payment method")
    amount: float = Field(description="Certificate value amount")


PaymentMethod = Annotated[CreditCard | GiftCard | Certificate, Field(discriminator="source")]


class Passenger(BaseModel):
    """A passenger of a reservation, or a user's saved passenger."""

    first_name: str = Field(description="Passenger's first name")
    last_name: str = Field(description="Passenger's last name")
    dob: str = Field(description="Date of birth in YYYY-MM-DD format")


class FlightDateStatusAvailable(BaseModel):
    """A flight date still open for booking: seats left and prices per cabin."""

    status: Literal["available"] = Field(description="Indicates flight is available for booking")
    available_seats: dict[CabinClass, int] = Field(description="Available seats by class")
    prices: dict[CabinClass, int] = Field(description="Current prices by class")


class FlightDateStatusOnTime(BaseModel):
    """A flight date that is on time (today's, not yet departed)."""

    status: Literal["on time"] = Field(description="Indicates flight is on time")
    estimated_departure_time_est: str = Field(description="Estimated departure time in EST")
    estimated_arrival_time_est: str = Field(description="Estimated arrival time in EST")


class FlightDateStatusFlying(BaseModel):
    """A flight date in the air now."""

    status: Literal["flying"] = Field(description="Indicates flight is in flight")
    actual_departure_time_est: str = Field(description="Actual departure time in EST")
    estimated_arrival_time_est: str = Field(description="Estimated arrival time in EST")


class FlightDateStatusLanded(BaseModel):
    """A flight date that has flown."""

    status: Literal["landed"] = Field(description="Indicates flight has landed")
    actual_departure_time_est: str = Field(description="Actual departure time in EST")
    actual_arrival_time_est: str = Field(description="Actual arrival time in EST")


class FlightDateStatusCancelled(BaseModel):
    """A cancelled flight date."""

    status: Literal["cancelled"] = Field(description="Indicates flight was cancelled")


class FlightDateStatusDelayed(BaseModel):
    """A delayed flight date."""

    status: Literal["delayed"] = Field(description="Indicates flight was delayed")
    estimated_departure_time_est: str = Field(description="Estimated departure time in EST")
    estimated_arrival_time_est: str = Field(description="Estimated arrival time in EST")


FlightDateStatus = Annotated[
    FlightDateStatusAvailable
    | FlightDateStatusLanded
    | FlightDateStatusCancelled
    | FlightDateStatusDelayed
    | FlightDateStatusFlying
    | FlightDateStatusOnTime,
    Field(discriminator="status"),
]


class Flight(BaseModel):
    """A scheduled flight and its state on each date."""

    flight_number: str = Field(description="Unique flight identifier")
    origin: str = Field(description="IATA code for origin airport")
    destination: str = Field(description="IATA code for destination airport")
    scheduled_departure_time_est: str = Field(
        description="Scheduled departure time in EST in the format HH:MM:SS, e.g 06:00:00"
    )
    scheduled_arrival_time_est: str = Field(
        description="Scheduled arrival time in EST in the format HH:MM:SS, e.g 07:00:00"
    )
    dates: dict[str, FlightDateStatus] = Field(description="Flight status by date (YYYY-MM-DD)")


class DirectFlight(BaseModel):
    """A search result: a bookable flight on a date, with seats and prices."""

    flight_number: str = Field(description="Unique flight identifier")
    origin: str = Field(description="IATA code for origin airport")
    destination: str = Field(description="IATA code for destination airport")
    status: Literal["available"] = Field(description="Indicates flight is available for booking")
    scheduled_departure_time_est: str = Field(description="Scheduled departure time in EST")
    scheduled_arrival_time_est: str = Field(description="Scheduled arrival time in EST")
    date: str | None = Field(None, description="Flight date in YYYY-MM-DD format")
    available_seats: dict[CabinClass, int] = Field(description="Available seats by class")
    prices: dict[CabinClass, int] = Field(description="Current prices by class")


class ReservationFlight(BaseModel):
    """One flight segment of a reservation, at the price paid per passenger."""

    flight_number: str = Field(description="Unique flight identifier")
    origin: str = Field(description="IATA code for origin airport")
    destination: str = Field(description="IATA code for destination airport")
    date: str = Field(description="Flight date in YYYY-MM-DD format")
    price: int = Field(description="Flight price in dollars.")


class FlightInfo(BaseModel):
    """A flight as a tool argument: its number and date."""

    flight_number: str = Field(description="Flight number, such as 'HAT001'.")
    date: str = Field(
        description="The date for the flight in the format 'YYYY-MM-DD', such as '2024-05-01'."
    )


class User(BaseModel):
    """A customer: profile, saved payment methods and passengers, reservations."""

    user_id: str = Field(description="Unique identifier for the user")
    name: Name = Field(description="User's full name")
    address: Address = Field(description="User's address information")
    email: str = Field(description="User's email address")
    dob: str = Field(description="User's date of birth in the format YYYY-MM-DD")
    payment_methods: dict[str, PaymentMethod] = Field(description="User's saved payment methods")
    saved_passengers: list[Passenger] = Field(description="User's saved passenger information")
    membership: MembershipLevel = Field(description="User's membership level")
    reservations: list[str] = Field(description="List of user's reservation IDs")


class Reservation(BaseModel):
    """A booking: trip, cabin, flights, passengers, payments, bags, insurance."""

    reservation_id: str = Field(description="Unique identifier for the reservation")
    user_id: str = Field(description="ID of the user who made the reservation")
    origin: str = Field(description="IATA code for trip origin")
    destination: str = Field(description="IATA code for trip destination")
    flight_type: FlightType = Field(description="Type of trip")
    cabin: CabinClass = Field(description="Selected cabin class")
    flights: list[ReservationFlight] = Field(description="List of flights in the reservation")
    passengers: list[Passenger] = Field(description="List of passengers on the reservation")
    payment_history: list[Payment] = Field(description="History of payments for this reservation")
    created_at: str = Field(description="Timestamp when reservation was created")
    total_baggages: int = Field(description="Total number of bags in reservation")
    nonfree_baggages: int = Field(description="Number of paid bags in reservation")
    insurance: Insurance = Field(description="Whether travel insurance was purchased")
    status: Literal["cancelled"] | None = Field(None, description="Status of the reservation")


class FlightDB(DB):
    """The airline DB: flights by number, users by id, reservations by id.

    Copy-on-write: a deep copy gets new top-level dicts that share the entities
    (a flight, a user, a reservation) with the original, and a tool takes its own
    copy of an entity (:meth:`own_flight`, :meth:`own_user`,
    :meth:`own_reservation`) before changing it in place. Both sides of a copy
    forget what they owned, so neither can change an entity the other sees.
    Code that changes a copy's entities in place must go through ``own_*`` too;
    :meth:`DB.updated` builds new entities and needs nothing.

    :meth:`hash` is tau2's (sha256 of ``json.dumps(model_dump(), sort_keys=True,
    default=str)``, the same text), built from one JSON text per entity; the text
    of a shared, hence unchanging, entity is computed once for all copies.
    """

    flights: dict[str, Flight] = Field(description="All flights indexed by flight number")
    users: dict[str, User] = Field(description="All users indexed by user ID")
    reservations: dict[str, Reservation] = Field(
        description="All reservations indexed by reservation ID"
    )
    _owned: set[tuple[str, str]] = PrivateAttr(default_factory=set)
    """(table, key) of the entities this DB alone holds (free to change in place)."""
    _texts: dict[int, tuple[BaseModel, str]] = PrivateAttr(default_factory=dict)
    """id(entity) -> (entity, its JSON) for shared entities; shared by all copies."""

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> FlightDB:
        """A copy sharing every entity with this DB (see the class docstring)."""
        copy = FlightDB.model_construct(
            flights=dict(self.flights), users=dict(self.users), reservations=dict(self.reservations)
        )
        self._owned.clear()
        copy._texts = self._texts
        return copy

    def own_flight(self, flight_number: str) -> Flight:
        """The flight, copied first if it may be shared (call before changing it)."""
        return self._own("flights", self.flights, flight_number)

    def own_user(self, user_id: str) -> User:
        """The user, copied first if it may be shared (call before changing it)."""
        return self._own("users", self.users, user_id)

    def own_reservation(self, reservation_id: str) -> Reservation:
        """The reservation, copied first if it may be shared (call before changing it)."""
        return self._own("reservations", self.reservations, reservation_id)

    def add_reservation(self, reservation: Reservation) -> None:
        """Store a new reservation (owned: it was just built)."""
        self.reservations[reservation.reservation_id] = reservation
        self._owned.add(("reservations", reservation.reservation_id))

    def _own(self, table: str, entities: dict[str, Any], key: str) -> Any:
        if (table, key) not in self._owned:
            entities[key] = entities[key].model_copy(deep=True)
            self._owned.add((table, key))
        return entities[key]

    def hash(self) -> str:
        """tau2's DB hash (the text of :meth:`DB.hash`), from per-entity JSON texts."""
        tables = []
        for table in sorted(type(self).model_fields):
            entities: dict[str, BaseModel] = getattr(self, table)
            body = ", ".join(
                f"{json.dumps(key)}: {self._text(table, key, entity)}"
                for key, entity in sorted(entities.items())
            )
            tables.append(f"{json.dumps(table)}: {{{body}}}")
        text = "{" + ", ".join(tables) + "}"
        return hashlib.sha256(text.encode()).hexdigest()

    def _text(self, table: str, key: str, entity: BaseModel) -> str:
        if (table, key) in self._owned:
            return _json(entity)
        cached = self._texts.get(id(entity))
        if cached is None or cached[0] is not entity:
            cached = self._texts[id(entity)] = (entity, _json(entity))
        return cached[1]


def _json(entity: BaseModel) -> str:
    return json.dumps(entity.model_dump(), sort_keys=True, default=str)
