"""pydantic models for tests/core/test_asyncapi.py, imported only where pydantic is installed."""

from __future__ import annotations

import datetime
import decimal
import uuid

import pydantic


class Address(pydantic.BaseModel):
    street: str
    city: str = "Paris"


class Customer(pydantic.BaseModel):
    """Who buys."""

    id: uuid.UUID
    since: datetime.datetime
    balance: decimal.Decimal
    home: Address
    others: list[Address] = []
    referrer: Customer | None = None


class Invoice(pydantic.BaseModel):
    customer: Customer
    billed_to: Address


class Category(pydantic.BaseModel):
    name: str
    parent: Category | None = None


async def on_invoice(invoice: Invoice) -> None:
    """Takes invoices."""
