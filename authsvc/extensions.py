"""authsvc.extensions: the module-level extension singletons, bound in ``create_app``."""

from __future__ import annotations

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base of every model (see ``authsvc.models``)."""


db = SQLAlchemy(model_class=Base)
