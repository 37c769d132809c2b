"""The data model. Tenant tables mix in :class:`Tenant`."""

from healthdb.models.appointment import Appointment
from healthdb.models.audit import AuditEvent
from healthdb.models.base import Base, Tenant, is_tenant
from healthdb.models.clinic import Clinic
from healthdb.models.export import ExportFile, ExportJob
from healthdb.models.operator import PlatformOperator
from healthdb.models.patient import Patient
from healthdb.models.user import RefreshToken, User, UserLogin

__all__ = [
    "Appointment",
    "AuditEvent",
    "Base",
    "Clinic",
    "ExportFile",
    "ExportJob",
    "Patient",
    "PlatformOperator",
    "RefreshToken",
    "Tenant",
    "User",
    "UserLogin",
    "is_tenant",
]
