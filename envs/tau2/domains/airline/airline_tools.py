"""tau2's airline agent tools (``AirlineTools``) over :class:`FlightDB`.

Semantics and error texts follow upstream ``src/tau2/domains/airline/tools.py``
(read, not copied), quirks included, because the DB reward compares the state
a gold replay reaches with the one the agent's calls reach, and both must move
exactly as tau2's would:

- "now" is fixed at ``2024-05-15T15:00:00`` (a new reservation's ``created_at``);
- new reservation ids are the first free of ``HATHAT``, ``HATHAU``, ``HATHAV``
  and certificates the first free of ``certificate_3221322`` .. ``_3221324``,
  so a gold replay and the agent's replay name them alike;
- ``cancel_reservation`` refunds every payment (negative entries) and marks the
  reservation cancelled, but releases no seat and accepts a reservation that is
  already cancelled; ``update_reservation_flights`` charges the fare difference
  but updates no seat count; only ``book_reservation`` takes seats;
- a certificate is removed from the profile when it pays a booking, and cannot
  pay a change; a gift card is drawn down (float balance);
- a tool changes an entity only after ``FlightDB.own_*`` (the DB is
  copy-on-write, see ``airline_models.py``);
- ``search_onestop_flight`` computes the next day as ``2024-05-<day+1>``
  (unpadded, May only), as tau2 does.
"""

from __future__ import annotations

from areal_env.envs.tau2.calculate import calculate
from areal_env.envs.tau2.domains.airline.airline_models import (
    AirportCode,
    CabinClass,
    Certificate,
    DirectFlight,
    Flight,
    FlightDateStatus,
    FlightDateStatusAvailable,
    FlightDB,
    FlightInfo,
    FlightType,
    Insurance,
    Passenger,
    Payment,
    Reservation,
    ReservationFlight,
    User,
)
from areal_env.envs.tau2.toolkit import Toolkit, ToolType, is_tool

NOW = "2024-05-15T15:00:00"
"""The airline domain's fixed current time (EST), as in its policy."""

NEW_RESERVATION_IDS = ("HATHAT", "HATHAU", "HATHAV")
"""Ids a booking takes, first free first (tau2 assumes at most three per task)."""

NEW_CERTIFICATE_IDS = tuple(f"certificate_{n}" for n in (3221322, 3221323, 3221324))
"""Ids ``send_certificate`` takes, first free in the user's profile first."""

AIRPORTS = (
    ("SFO", "San Francisco"),
    ("JFK", "New York"),
    ("LAX", "Los Angeles"),
    ("ORD", "Chicago"),
    ("DFW", "Dallas"),
    ("DEN", "Denver"),
    ("SEA", "Seattle"),
    ("ATL", "Atlanta"),
    ("MIA", "Miami"),
    ("BOS", "Boston"),
    ("PHX", "Phoenix"),
    ("IAH", "Houston"),
    ("LAS", "Las Vegas"),
    ("MCO", "Orlando"),
    ("EWR", "Newark"),
    ("CLT", "Charlotte"),
    ("MSP", "Minneapolis"),
    ("DTW", "Detroit"),
    ("PHL", "Philadelphia"),
    ("LGA", "LaGuardia"),
)
"""What ``list_all_airports`` answers, in tau2's order."""

INSURANCE_PER_PASSENGER = 30
BAG_FEE = 50


class AirlineTools(Toolkit[FlightDB]):
    """The airline domain's agent tools (see the module docstring)."""

    # ---- lookups (tau2's error texts) --------------------------------------------------

    def _user(self, user_id: str) -> User:
        if user_id not in self.db.users:
            raise ValueError(f"User {user_id} not found")
        return self.db.users[user_id]

    def _reservation(self, reservation_id: str) -> Reservation:
        if reservation_id not in self.db.reservations:
            raise ValueError(f"Reservation {reservation_id} not found")
        return self.db.reservations[reservation_id]

    def _flight(self, flight_number: str) -> Flight:
        if flight_number not in self.db.flights:
            raise ValueError(f"Flight {flight_number} not found")
        return self.db.flights[flight_number]

    def _flight_on(self, flight_number: str, date: str) -> FlightDateStatus:
        flight = self._flight(flight_number)
        if date not in flight.dates:
            raise ValueError(f"Flight {flight_number} not found on date {date}")
        return flight.dates[date]

    def _bookable(
        self, info: FlightInfo, cabin: CabinClass, seats: int
    ) -> FlightDateStatusAvailable:
        """The flight's date data when it is open with ``seats`` free in ``cabin``."""
        day = self._flight_on(info.flight_number, info.date)
        if not isinstance(day, FlightDateStatusAvailable):
            raise ValueError(f"Flight {info.flight_number} not available on date {info.date}")
        if day.available_seats[cabin] < seats:
            raise ValueError(f"Not enough seats on flight {info.flight_number}")
        return day

    def _own_reservation_and_user(self, reservation_id: str) -> tuple[Reservation, User]:
        """The reservation and its user, checked to exist and owned (an update changes both)."""
        user_id = self._reservation(reservation_id).user_id
        self._user(user_id)
        return self.db.own_reservation(reservation_id), self.db.own_user(user_id)

    def _new_reservation_id(self) -> str:
        for reservation_id in NEW_RESERVATION_IDS:
            if reservation_id not in self.db.reservations:
                return reservation_id
        raise ValueError("Too many reservations")

    def _direct_flights(
        self,
        date: str,
        origin: str | None = None,
        destination: str | None = None,
        leave_after: str | None = None,
    ) -> list[DirectFlight]:
        """Flights open on ``date`` matching the filters (a string compare on times, as tau2)."""
        found = []
        for flight in self.db.flights.values():
            day = flight.dates.get(date)
            if (
                (origin is None or flight.origin == origin)
                and (destination is None or flight.destination == destination)
                and isinstance(day, FlightDateStatusAvailable)
                and (leave_after is None or flight.scheduled_departure_time_est >= leave_after)
            ):
                found.append(
                    DirectFlight(
                        flight_number=flight.flight_number,
                        origin=flight.origin,
                        destination=flight.destination,
                        status="available",
                        scheduled_departure_time_est=flight.scheduled_departure_time_est,
                        scheduled_arrival_time_est=flight.scheduled_arrival_time_est,
                        available_seats=dict(day.available_seats),
                        prices=dict(day.prices),
                    )
                )
        return found

    def _charge_for_update(self, user: User, payment_id: str, total: int) -> Payment | None:
        """Check and take a change's payment; None when nothing is owed (no history entry).

        A refund (``total`` < 0) is recorded as a negative payment, and a gift
        card gets it back, as in tau2.
        """
        if payment_id not in user.payment_methods:
            raise ValueError("Payment method not found")
        method = user.payment_methods[payment_id]
        if isinstance(method, Certificate):
            raise ValueError("Certificate cannot be used to update reservation")
        if method.source == "gift_card":
            if method.amount < total:
                raise ValueError("Gift card balance is not enough")
            method.amount -= total
        return None if total == 0 else Payment(payment_id=payment_id, amount=total)

    # ---- tools ------------------------------------------------------------------------

    @is_tool(ToolType.WRITE)
    def book_reservation(
        self,
        user_id: str,
        origin: str,
        destination: str,
        flight_type: FlightType,
        cabin: CabinClass,
        flights: list[FlightInfo],
        passengers: list[Passenger],
        payment_methods: list[Payment],
        total_baggages: int,
        nonfree_baggages: int,
        insurance: Insurance,
    ) -> Reservation:
        """Book a reservation.

        Args:
            user_id: The ID of the user to book the reservation such as 'sara_doe_496'`.
            origin: The IATA code for the origin city such as 'SFO'.
            destination: The IATA code for the destination city such as 'JFK'.
            flight_type: The type of flight such as 'one_way' or 'round_trip'.
            cabin: The cabin class such as 'basic_economy', 'economy', or 'business'.
            flights: An array of objects containing details about each piece of flight.
            passengers: An array of objects containing details about each passenger.
            payment_methods: An array of objects containing details about each payment method.
            total_baggages: The total number of baggage items to book the reservation.
            nonfree_baggages: The number of non-free baggage items to book the reservation.
            insurance: Whether the reservation has insurance.
        """
        user = self._user(user_id)
        reservation_id = self._new_reservation_id()
        segments: list[ReservationFlight] = []
        total = 0
        for info in flights:
            flight = self._flight(info.flight_number)
            day = self._bookable(info, cabin, len(passengers))
            price = day.prices[cabin]
            segments.append(
                ReservationFlight(
                    flight_number=info.flight_number,
                    origin=flight.origin,
                    destination=flight.destination,
                    date=info.date,
                    price=price,
                )
            )
            total += price * len(passengers)
        if insurance == "yes":
            total += INSURANCE_PER_PASSENGER * len(passengers)
        total += BAG_FEE * nonfree_baggages

        # Every check passes before anything is taken, so a failed booking changes nothing.
        for payment in payment_methods:
            if payment.payment_id not in user.payment_methods:
                raise ValueError(f"Payment method {payment.payment_id} not found")
            method = user.payment_methods[payment.payment_id]
            if method.source != "credit_card" and method.amount < payment.amount:
                raise ValueError(f"Not enough balance in payment method {payment.payment_id}")
        paid = sum(p.amount for p in payment_methods)
        if paid != total:
            raise ValueError(
                f"Payment amount does not add up, total price is {total}, but paid {paid}"
            )
        user = self.db.own_user(user_id)
        for payment in payment_methods:
            method = user.payment_methods[payment.payment_id]
            if method.source == "gift_card":
                method.amount -= payment.amount
            elif method.source == "certificate":
                del user.payment_methods[payment.payment_id]

        for info in flights:
            day = self.db.own_flight(info.flight_number).dates[info.date]
            assert isinstance(day, FlightDateStatusAvailable)  # checked above
            day.available_seats[cabin] -= len(passengers)
        reservation = Reservation(
            reservation_id=reservation_id,
            user_id=user_id,
            origin=origin,
            destination=destination,
            flight_type=flight_type,
            cabin=cabin,
            flights=segments,
            passengers=[p.model_copy() for p in passengers],
            payment_history=[p.model_copy() for p in payment_methods],
            created_at=NOW,
            total_baggages=total_baggages,
            nonfree_baggages=nonfree_baggages,
            insurance=insurance,
        )
        self.db.add_reservation(reservation)
        user.reservations.append(reservation_id)
        return reservation

    @is_tool(ToolType.GENERIC)
    def calculate(self, expression: str) -> str:
        """Calculate the result of a mathematical expression.

        Args:
            expression: The mathematical expression to calculate, such as '2 + 2'. The
                expression can contain numbers, operators (+, -, *, /), parentheses, and
                spaces.
        """
        return calculate(expression)

    @is_tool(ToolType.WRITE)
    def cancel_reservation(self, reservation_id: str) -> Reservation:
        """Cancel the whole reservation.

        Args:
            reservation_id: The reservation ID, such as 'ZFA04Y'.
        """
        self._reservation(reservation_id)
        reservation = self.db.own_reservation(reservation_id)
        refunds = [
            Payment(payment_id=p.payment_id, amount=-p.amount) for p in reservation.payment_history
        ]
        reservation.payment_history.extend(refunds)
        reservation.status = "cancelled"
        return reservation

    @is_tool(ToolType.READ)
    def get_reservation_details(self, reservation_id: str) -> Reservation:
        """Get the details of a reservation.

        Args:
            reservation_id: The reservation ID, such as '8JX2WO'.
        """
        return self._reservation(reservation_id)

    @is_tool(ToolType.READ)
    def get_user_details(self, user_id: str) -> User:
        """Get the details of a user, including their reservations.

        Args:
            user_id: The user ID, such as 'sara_doe_496'.
        """
        return self._user(user_id)

    @is_tool(ToolType.READ)
    def list_all_airports(self) -> list[AirportCode]:
        """Returns a list of all available airports."""
        return [AirportCode(iata=iata, city=city) for iata, city in AIRPORTS]

    @is_tool(ToolType.READ)
    def search_direct_flight(self, origin: str, destination: str, date: str) -> list[DirectFlight]:
        """Search for direct flights between two cities on a specific date.

        Args:
            origin: The origin city airport in three letters, such as 'JFK'.
            destination: The destination city airport in three letters, such as 'LAX'.
            date: The date of the flight in the format 'YYYY-MM-DD', such as '2024-01-01'.
        """
        return self._direct_flights(date=date, origin=origin, destination=destination)

    @is_tool(ToolType.READ)
    def search_onestop_flight(
        self, origin: str, destination: str, date: str
    ) -> list[list[DirectFlight]]:
        """Search for one-stop flights between two cities on a specific date.

        Args:
            origin: The origin city airport in three letters, such as 'JFK'.
            destination: The destination city airport in three letters, such as 'LAX'.
            date: The date of the flight in the format 'YYYY-MM-DD', such as '2024-05-01'.
        """
        pairs = []
        for first in self._direct_flights(date=date, origin=origin):
            first.date = date
            # tau2's next day: May only and unpadded ("2024-05-6"), kept for parity.
            overnight = "+1" in first.scheduled_arrival_time_est
            date2 = f"2024-05-{int(date[-2:]) + 1}" if overnight else date
            for second in self._direct_flights(
                date=date2,
                origin=first.destination,
                destination=destination,
                leave_after=first.scheduled_arrival_time_est,
            ):
                second.date = date2
                pairs.append([first, second])
        return pairs

    @is_tool(ToolType.WRITE)
    def send_certificate(self, user_id: str, amount: int) -> str:
        """Send a certificate to a user. Be careful!

        Args:
            user_id: The ID of the user to book the reservation, such as 'sara_doe_496'.
            amount: The amount of the certificate to send.
        """
        self._user(user_id)
        user = self.db.own_user(user_id)
        for payment_id in NEW_CERTIFICATE_IDS:
            if payment_id not in user.payment_methods:
                user.payment_methods[payment_id] = Certificate(
                    source="certificate", id=payment_id, amount=amount
                )
                return f"Certificate {payment_id} added to user {user_id} with amount {amount}."
        raise ValueError("Too many certificates")

    @is_tool(ToolType.GENERIC)
    def transfer_to_human_agents(self, summary: str) -> str:
        """Transfer the user to a human agent, with a summary of the user's issue.

        Only transfer if
         -  the user explicitly asks for a human agent
         -  given the policy and the available tools, you cannot solve the user's issue.

        Args:
            summary: A summary of the user's issue.
        """
        return "Transfer successful"

    @is_tool(ToolType.WRITE)
    def update_reservation_baggages(
        self,
        reservation_id: str,
        total_baggages: int,
        nonfree_baggages: int,
        payment_id: str,
    ) -> Reservation:
        """Update the baggage information of a reservation.

        Args:
            reservation_id: The reservation ID, such as 'ZFA04Y'
            total_baggages: The updated total number of baggage items included in the reservation.
            nonfree_baggages: The updated number of non-free baggage items included in the
                reservation.
            payment_id: The payment id stored in user profile, such as 'credit_card_7815826',
                'gift_card_7815826', 'certificate_7815826'.
        """
        reservation, user = self._own_reservation_and_user(reservation_id)
        total = BAG_FEE * max(0, nonfree_baggages - reservation.nonfree_baggages)
        payment = self._charge_for_update(user, payment_id, total)
        if payment is not None:
            reservation.payment_history.append(payment)
        reservation.total_baggages = total_baggages
        reservation.nonfree_baggages = nonfree_baggages
        return reservation

    @is_tool(ToolType.WRITE)
    def update_reservation_flights(
        self,
        reservation_id: str,
        cabin: CabinClass,
        flights: list[FlightInfo],
        payment_id: str,
    ) -> Reservation:
        """Update the flight information of a reservation.

        Args:
            reservation_id: The reservation ID, such as 'ZFA04Y'.
            cabin: The cabin class of the reservation
            flights: An array of objects containing details about each piece of flight in the
                ENTIRE new reservation. Even if the a flight segment is not changed, it should
                still be included in the array.
            payment_id: The payment id stored in user profile, such as 'credit_card_7815826',
                'gift_card_7815826', 'certificate_7815826'.
        """
        reservation, user = self._own_reservation_and_user(reservation_id)
        travellers = len(reservation.passengers)
        segments: list[ReservationFlight] = []
        total = 0
        for info in flights:
            # A segment kept as is (same flight, date and cabin) keeps the price paid.
            kept = next(
                (
                    s
                    for s in reservation.flights
                    if s.flight_number == info.flight_number
                    and s.date == info.date
                    and cabin == reservation.cabin
                ),
                None,
            )
            if kept is not None:
                total += kept.price * travellers
                segments.append(kept)
                continue
            flight = self._flight(info.flight_number)
            day = self._bookable(info, cabin, travellers)
            segment = ReservationFlight(
                flight_number=info.flight_number,
                origin=flight.origin,
                destination=flight.destination,
                date=info.date,
                price=day.prices[cabin],
            )
            total += segment.price * travellers
            segments.append(segment)
        total -= sum(s.price for s in reservation.flights) * travellers
        payment = self._charge_for_update(user, payment_id, total)
        if payment is not None:
            reservation.payment_history.append(payment)
        reservation.flights = segments
        reservation.cabin = cabin
        return reservation

    @is_tool(ToolType.WRITE)
    def update_reservation_passengers(
        self, reservation_id: str, passengers: list[Passenger]
    ) -> Reservation:
        """Update the passenger information of a reservation.

        Args:
            reservation_id: The reservation ID, such as 'ZFA04Y'.
            passengers: An array of objects containing details about each passenger.
        """
        self._reservation(reservation_id)
        reservation = self.db.own_reservation(reservation_id)
        if len(passengers) != len(reservation.passengers):
            raise ValueError("Number of passengers does not match")
        reservation.passengers = [p.model_copy() for p in passengers]
        return reservation

    @is_tool(ToolType.READ)
    def get_flight_status(self, flight_number: str, date: str) -> str:
        """Get the status of a flight.

        Args:
            flight_number: The flight number.
            date: The date of the flight.
        """
        return self._flight_on(flight_number, date).status
