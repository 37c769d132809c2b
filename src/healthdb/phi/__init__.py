"""Protected health information: declared on the columns, masked by role, redacted from
logs, encrypted at rest where most sensitive, and audited on every touch."""

from healthdb.phi.declaration import PhiKind, not_phi, phi, phi_fields
from healthdb.phi.masking import POLICY, MaskedValue, Visibility, mask_value, visibility

__all__ = [
    "POLICY",
    "MaskedValue",
    "PhiKind",
    "Visibility",
    "mask_value",
    "not_phi",
    "phi",
    "phi_fields",
    "visibility",
]
